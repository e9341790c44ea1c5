"""GPU offload (CUDA, Metal, Vulkan builds): skipped where no GPU device is registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_llama import Context, Model
from cortex_llama.system import devices

from .helpers import greedy_argmax

pytestmark = pytest.mark.gpu
GPUS = [d for d in devices() if d.type in ("gpu", "igpu")]
needs_gpu = pytest.mark.skipif(not GPUS, reason="no GPU device in this build/machine")


@needs_gpu
@pytest.mark.parametrize("preset_path", ["tiny_path", "small_path"])
def test_offloaded_greedy_equals_cpu(preset_path: str, request) -> None:
    path: Path = request.getfixturevalue(preset_path)
    outs = []
    for ngl in (0, -1):
        with Model(path, n_gpu_layers=ngl) as m, Context(m, n_ctx=512, n_threads=2) as ctx:
            outs.append(greedy_argmax(ctx, m.tokenize("offload check"), 32))
    assert outs[0] == outs[1]


@needs_gpu
def test_gpu_device_reports_memory() -> None:
    assert all(d.memory_total > 0 for d in GPUS)
