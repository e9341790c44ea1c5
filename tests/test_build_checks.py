"""The build refuses an empty or wrong-commit vendor/llama.cpp with a message naming the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, VENDOR, source_tree

CMAKE = shutil.which("cmake")


def _configure(tmp_path: Path, fill: str | None) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "CMakeLists.txt", src)
    shutil.copy(ROOT / "LLAMA_CPP_COMMIT", src)
    shutil.copytree(ROOT / "cmake", src / "cmake")
    vendor = src / "vendor" / "llama.cpp"
    vendor.mkdir(parents=True)
    if fill is not None:
        (vendor / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.21)\n")
        (vendor / ".cortex-llama-commit").write_text(fill + "\n")
    return subprocess.run([CMAKE, "-S", str(src), "-B", str(tmp_path / "build")],
                          capture_output=True, text=True)


@pytest.mark.skipif(CMAKE is None, reason="no cmake")
def test_empty_vendor_names_the_script(tmp_path: Path) -> None:
    out = _configure(tmp_path, None)
    assert out.returncode != 0
    assert "vendor/llama.cpp is empty" in out.stderr
    assert "scripts/fetch_llama_cpp.py" in out.stderr


@pytest.mark.skipif(CMAKE is None, reason="no cmake")
def test_wrong_commit_names_both_commits(tmp_path: Path) -> None:
    out = _configure(tmp_path, "1111111111111111111111111111111111111111")
    assert out.returncode != 0
    assert "1111111111111111111111111111111111111111" in out.stderr
    assert (ROOT / "LLAMA_CPP_COMMIT").read_text().strip() in out.stderr
    assert "fetch_llama_cpp.py --force" in out.stderr


def test_fetch_script_is_idempotent() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_llama_cpp.py")],
                         capture_output=True, text=True, check=True)
    assert "already holds llama.cpp" in out.stdout


@pytest.mark.skipif(CMAKE is None, reason="no cmake")
@pytest.mark.skipif(not (VENDOR / "CMakeLists.txt").exists(), reason="vendor/llama.cpp not filled")
def test_requested_backend_that_cannot_be_built_fails_the_configure(tmp_path: Path) -> None:
    # With the Vulkan SDK hidden from CMake, -DGGML_VULKAN=ON must stop the configure
    # (ggml's own find_package at this pin, or CMakeLists.txt's check that every
    # requested backend target exists), never fall back to a CPU-only build.
    src = source_tree(tmp_path)
    out = subprocess.run([CMAKE, "-S", str(src), "-B", str(tmp_path / "build"), "-DGGML_VULKAN=ON",
                          "-DCMAKE_DISABLE_FIND_PACKAGE_Vulkan=ON"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "Vulkan" in out.stderr
    assert not (tmp_path / "build" / "Makefile").exists() and not (tmp_path / "build" / "build.ninja").exists()
