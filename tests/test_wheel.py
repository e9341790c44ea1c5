"""Portable builds (GGML_BACKEND_DL, as in the wheels): the package loads the backend
modules it ships, and the CPU variant picked at run time is reported.

Skipped for the default native build; ``scripts/check_wheel.sh`` runs them against
an installed, auditwheel-repaired wheel.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cortex_llama import _lib
from cortex_llama.system import backends, system_info

pytestmark = [pytest.mark.wheel,
              pytest.mark.skipif("GGML_BACKEND_DL" not in system_info()["build_options"],
                                 reason="not a GGML_BACKEND_DL build")]


def test_backends_are_modules_loaded_from_the_package() -> None:
    modules = sorted(p.name for p in _lib.lib_dir.glob("*ggml-*") if "ggml-base" not in p.name)
    assert any("ggml-cpu" in m for m in modules), modules
    assert "CPU" in backends()
    if any("ggml-rpc" in m for m in modules):
        assert "RPC" in backends()


@pytest.mark.skipif("GGML_CPU_ALL_VARIANTS" not in system_info()["build_options"],
                    reason="one CPU variant only")
def test_best_cpu_variant_is_picked_and_logged() -> None:
    variants = sorted(p.name for p in _lib.lib_dir.glob("libggml-cpu-*"))
    assert len(variants) > 3, variants  # x64, sse42, haswell, ... (or ARM variants)
    code = ("import logging; logging.basicConfig(level=logging.INFO);"
            "import cortex_llama.system as s; print(s.backends())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [line for line in out.stderr.splitlines() if "loaded CPU backend from" in line]
    assert len(loaded) == 1, out.stderr
    assert any(v in loaded[0] for v in variants), loaded
