"""The Vulkan backend, run on the CPU through Mesa's lavapipe in CI-less checks.

Skipped unless the loaded libraries have a Vulkan device: build them with
``bash scripts/check_vulkan.sh`` (it sets ``CORTEX_LLAMA_LIB_DIR`` and
``GGML_VK_VISIBLE_DEVICES=0``, which ggml needs before it will use a CPU-type
Vulkan device such as lavapipe).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cortex_llama import LLM, Context, Model
from cortex_llama.system import devices

from .helpers import greedy_argmax

VULKAN = [d for d in devices() if d.backend == "Vulkan"]
pytestmark = [pytest.mark.vulkan, pytest.mark.gpu,
              pytest.mark.skipif(not VULKAN, reason="no Vulkan device in this build/machine")]


def test_info_lists_the_vulkan_device() -> None:
    out = subprocess.run([sys.executable, "-m", "cortex_llama", "info", "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert "Vulkan" in info["backends"]
    assert any(d["backend"] == "Vulkan" and d["name"] == VULKAN[0].name for d in info["devices"])
    assert "GGML_VULKAN" in info["build_options"]


@pytest.mark.parametrize("preset_path", ["tiny_path", "small_path"])
def test_all_layers_on_vulkan_equal_cpu_greedy(preset_path: str, request: pytest.FixtureRequest,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path: Path = request.getfixturevalue(preset_path)
    outs = []
    for ngl in (0, -1):
        with caplog.at_level(logging.INFO, logger="cortex_llama"):
            with Model(path, n_gpu_layers=ngl, devices=[VULKAN[0].name] if ngl else None) as m, \
                    Context(m, n_ctx=256, n_threads=2) as ctx:
                outs.append(greedy_argmax(ctx, m.tokenize("vulkan check"), 32))
    assert outs[0] == outs[1]
    # the weights really went to the Vulkan device
    assert any(f"{VULKAN[0].name} model buffer size" in r.getMessage() for r in caplog.records)


def test_high_level_api_on_vulkan(small_path: Path) -> None:
    with LLM(small_path, threads=2, context_size=256) as cpu:
        want = cpu.complete("offload", max_tokens=16, temperature=0).tokens
    with LLM(small_path, threads=2, context_size=256, gpu_layers=-1) as gpu:
        assert gpu.complete("offload", max_tokens=16, temperature=0).tokens == want
