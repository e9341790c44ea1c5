"""Shared fixtures: real GGUF test models made once per session, no mocks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cortex_llama import Context, Model
from cortex_llama.testmodel import make_test_model

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "vendor" / "llama.cpp"


def source_tree(tmp_path: Path) -> Path:
    """A copy of the package's build files in ``tmp_path/src`` with vendor/llama.cpp
    linked to the real vendored tree: a place to run CMake configures in tests."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CMakeLists.txt", "LLAMA_CPP_COMMIT"):
        shutil.copy(ROOT / name, src)
    for name in ("cmake", "patches", "csrc"):
        shutil.copytree(ROOT / name, src / name)
    (src / "vendor").mkdir()
    (src / "vendor" / "llama.cpp").symlink_to(VENDOR)
    return src


def have_cc() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_path(models_dir: Path) -> Path:
    return make_test_model(models_dir / "tiny.gguf", "tiny")


@pytest.fixture(scope="session")
def small_path(models_dir: Path) -> Path:
    return make_test_model(models_dir / "small.gguf", "small")


@pytest.fixture(scope="session")
def small_q4_path(models_dir: Path, small_path: Path) -> Path:
    """The small model quantized to Q4_0."""
    from cortex_llama import quantize

    return quantize(small_path, models_dir / "small-q4_0.gguf", "Q4_0")


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the model registry's cache, pulled on first
    use. Skipped when it cannot be fetched, unless CORTEX_LLAMA_REQUIRE_REAL=1 (CI)."""
    from cortex_llama import RegistryError, registry

    try:
        return registry.pull("smollm2-135m-instruct")
    except RegistryError as exc:
        if os.environ.get("CORTEX_LLAMA_REQUIRE_REAL") == "1":
            pytest.fail(f"the real model is required (CORTEX_LLAMA_REQUIRE_REAL=1): {exc}")
        pytest.skip(f"the real model cannot be fetched: {exc}")


@pytest.fixture(scope="session")
def tiny(tiny_path: Path) -> Model:
    """A session-wide tiny model. Tests must not close it."""
    return Model(tiny_path)


@pytest.fixture()
def ctx(tiny: Model):
    with Context(tiny, n_ctx=512, n_batch=512, n_seq_max=4, n_threads=2) as c:
        yield c
