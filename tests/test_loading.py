"""Loading the native library: where it looks, what it says when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cortex_llama
from cortex_llama import _lib
from cortex_llama._cdef import LLAMA_CPP_COMMIT


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd="/")


def test_library_comes_from_the_package_lib_folder() -> None:
    assert _lib.lib_dir == Path(cortex_llama.__file__).resolve().parent / "lib"


def test_library_commit_matches_declarations() -> None:
    built = _lib.library_commit()
    assert built is not None and LLAMA_CPP_COMMIT.startswith(built)


def test_missing_library_lists_every_path_tried(tmp_path: Path) -> None:
    out = _run("import cortex_llama", CORTEX_LLAMA_LIB_DIR=str(tmp_path))
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert str(tmp_path / "libllama.so") in out.stderr
    assert "CORTEX_LLAMA_LIB_DIR" in out.stderr


def _mirror_lib_dir(tmp_path: Path, skip: str = "") -> Path:
    """A new lib folder of symlinks to the package's libraries. An auditwheel-repaired
    wheel finds its vendored libraries (libgomp) through ``$ORIGIN/../../<pkg>.libs``,
    so that sibling folder is mirrored as well."""
    lib_dir = tmp_path / "cortex_llama" / "lib"
    lib_dir.mkdir(parents=True)
    for item in _lib.lib_dir.iterdir():
        if item.name != skip:
            (lib_dir / item.name).symlink_to(item)
    for libs in _lib.lib_dir.parent.parent.glob("*.libs"):
        (tmp_path / libs.name).symlink_to(libs)
    return lib_dir


def test_library_of_another_commit_is_refused(tmp_path: Path) -> None:
    lib_dir = _mirror_lib_dir(tmp_path, skip="llama_cpp_commit.txt")
    (lib_dir / "llama_cpp_commit.txt").write_text("deadbeefdeadbeef\n")
    out = _run("import cortex_llama", CORTEX_LLAMA_LIB_DIR=str(lib_dir))
    assert out.returncode != 0
    assert "deadbeefdeadbeef" in out.stderr and LLAMA_CPP_COMMIT in out.stderr


def test_override_directory_is_used(tmp_path: Path) -> None:
    lib_dir = _mirror_lib_dir(tmp_path)
    out = _run("from cortex_llama import _lib; print(_lib.lib_dir)", CORTEX_LLAMA_LIB_DIR=str(lib_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(lib_dir)


def test_init_is_idempotent_and_thread_safe() -> None:
    import threading

    threads = [threading.Thread(target=_lib.init) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _lib._initialized


def test_llama_logs_go_to_the_logger(tiny_path: Path, caplog) -> None:
    import logging

    with caplog.at_level(logging.DEBUG, logger="cortex_llama"):
        cortex_llama.Model(tiny_path).close()
    assert any("llama" in r.getMessage() for r in caplog.records)


def test_quiet_by_default(tiny_path: Path) -> None:
    out = _run(f"import cortex_llama; cortex_llama.Model({str(tiny_path)!r}).close()")
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and out.stdout == ""


def test_info_command() -> None:
    for cmd in ([sys.executable, "-m", "cortex_llama", "info", "--json"],
                ["cortex-llama", "info", "--json"]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["llama_cpp_commit"] == LLAMA_CPP_COMMIT
        assert info["cortex_llama"] == cortex_llama.__version__
        assert any(d["type"] == "cpu" for d in info["devices"])
        assert set(info["supports"]) == {"gpu_offload", "mmap", "mlock", "rpc", "multimodal"}
        assert "CPU" in info["system_info"]
    text = subprocess.run([sys.executable, "-m", "cortex_llama", "info"], capture_output=True,
                          text=True, check=True).stdout
    assert "llama.cpp" in text and "devices" in text


def test_build_info_module() -> None:
    from cortex_llama import _build_info

    assert _build_info.LLAMA_CPP_COMMIT == LLAMA_CPP_COMMIT
    assert isinstance(_build_info.BUILD_OPTIONS, list)


