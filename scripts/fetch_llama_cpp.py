#!/usr/bin/env python3
"""Fill an empty ``vendor/llama.cpp`` with the pinned llama.cpp sources.

``vendor/llama.cpp`` is a git submodule of https://github.com/ggml-org/llama.cpp,
pinned at the commit in ``LLAMA_CPP_COMMIT``.  Where that host cannot be reached,
this script takes the same tree from the Python package index instead: the sdist
``llama_cpp_python-0.3.36.tar.gz`` vendors llama.cpp at exactly that commit (its
``.git/modules/vendor/llama.cpp/HEAD`` names it), so we download it with pip,
verify its sha256, and extract only its ``vendor/llama.cpp`` folder.

The script is idempotent: a filled tree at the right commit is left alone, and the
download is cached (``$CORTEX_LLAMA_CACHE`` or ``~/.cache/cortex-llama``).

Usage: python scripts/fetch_llama_cpp.py [--force] [--dest DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMIT = (ROOT / "LLAMA_CPP_COMMIT").read_text().strip()

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_PREFIX = f"llama_cpp_python-{SDIST_VERSION}/"
SDIST_VENDOR = SDIST_PREFIX + "vendor/llama.cpp/"
SDIST_HEAD = SDIST_PREFIX + ".git/modules/vendor/llama.cpp/HEAD"

# Written into the filled tree so that CMake and this script can tell its commit
# without git (the tree has no .git of its own).
STAMP = ".cortex-llama-commit"


def cache_dir() -> Path:
    env = os.environ.get("CORTEX_LLAMA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cortex-llama"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_commit(dest: Path) -> str | None:
    """The commit of a filled tree: our stamp, else git's HEAD of a real checkout."""
    stamp = dest / STAMP
    if stamp.is_file():
        return stamp.read_text().strip()
    if (dest / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(dest), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def download_sdist() -> Path:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / SDIST_FILE
    if target.is_file() and sha256_of(target) == SDIST_SHA256:
        print(f"using cached {target}")
        return target
    print(f"downloading {SDIST_NAME}=={SDIST_VERSION} (sdist) into {cache}")
    if importlib.util.find_spec("scikit_build_core") is None:
        # pip prepares the sdist's metadata with it (see --no-build-isolation below)
        subprocess.run([sys.executable, "-m", "pip", "install", "scikit-build-core>=0.10"], check=True)
    # --no-build-isolation: pip prepares the sdist's metadata with the installed
    # scikit-build-core instead of building its build requirements from source.
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--no-build-isolation", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(cache),
    ]
    subprocess.run(cmd, check=True)
    if not target.is_file():
        sys.exit(f"error: pip did not produce {target}")
    actual = sha256_of(target)
    if actual != SDIST_SHA256:
        target.unlink()
        sys.exit(f"error: {SDIST_FILE} has sha256 {actual}, expected {SDIST_SHA256}; removed it")
    return target


def extract(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist, "r:gz") as tar:
        head = tar.extractfile(SDIST_HEAD)
        if head is None:
            sys.exit(f"error: {sdist} has no {SDIST_HEAD}")
        sdist_commit = head.read().decode().strip()
        if sdist_commit != COMMIT:
            sys.exit(f"error: {sdist} vendors llama.cpp {sdist_commit}, not the pinned {COMMIT}")
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(SDIST_VENDOR):
                continue
            rel = member.name[len(SDIST_VENDOR):]
            # The sdist's gitlink file points into its own .git; it must not
            # become a .git inside our checkout.
            if not rel or rel == ".git" or rel.startswith(".git/"):
                continue
            if not (member.isfile() or member.isdir() or member.issym()):
                continue
            member.name = rel
            members.append(member)
        tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=dest.parent))
        try:
            try:
                tar.extractall(tmp, members=members, filter="data")
            except TypeError:  # Python < 3.10.12 has no extraction filters
                tar.extractall(tmp, members=members)
            (tmp / STAMP).write_text(COMMIT + "\n")
            for child in list(dest.iterdir()) if dest.exists() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            dest.mkdir(parents=True, exist_ok=True)
            for child in tmp.iterdir():
                child.rename(dest / child.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-extract even when filled")
    parser.add_argument("--dest", type=Path, default=ROOT / "vendor" / "llama.cpp")
    args = parser.parse_args(argv)
    dest: Path = args.dest

    current = tree_commit(dest) if dest.is_dir() else None
    if current == COMMIT and not args.force:
        print(f"{dest} already holds llama.cpp {COMMIT}")
        return 0
    if (dest / ".git").exists():
        sys.exit(
            f"error: {dest} is a git checkout at {current}; run "
            f"'git -C {dest} checkout {COMMIT}' (or 'git submodule update') instead"
        )
    if current is not None:
        print(f"{dest} holds llama.cpp {current}; replacing it with {COMMIT}")
    extract(download_sdist(), dest)
    print(f"filled {dest} with llama.cpp {COMMIT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
