"""Every quantization type the CPU backend runs: decoded in a subprocess (a crash
fails the test naming the signal instead of killing the run), finite logits, and
the repacked kernels (``use_extra_bufts=True``) agreeing with the plain ones.

Repacked kernels accumulate in another order, so their logits differ slightly on
some types (measured on the small test model: up to 0.41 on a logit range of
~34, i.e. 1.2 %). The agreement rule: every logit within ``REL_TOL`` of the logit
range, teacher-forced on the plain kernels' greedy tokens, and wherever the
repacked kernels would pick another token, the two were within ``TIE_GAP`` of a
tie.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cortex_llama import LlamaError, quantize

PROBE = Path(__file__).with_name("quant_probe.py")
REL_TOL = 0.03
TIE_GAP = 0.25

#: every type `quantize` makes from an F32 model without an importance matrix
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS",
         "TQ1_0", "TQ2_0", "Q1_0", "Q2_0", "MXFP4_MOE"]
#: these need an importance matrix (llama-imatrix); quantize must refuse them cleanly
NEED_IMATRIX = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"]


@pytest.fixture(scope="module")
def quant_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quant")


@pytest.mark.parametrize("ftype", TYPES)
def test_quantized_type_decodes_and_repacking_agrees(ftype: str, small_path: Path, quant_dir: Path) -> None:
    path = quantize(small_path, quant_dir / f"small-{ftype}.gguf", ftype)
    proc = subprocess.run([sys.executable, str(PROBE), str(path)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode < 0:
        pytest.fail(f"{ftype}: the decoding process died with {signal.Signals(-proc.returncode).name}\n"
                    f"{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"{ftype}: probe failed\n{proc.stderr[-2000:]}"
    out = json.loads(proc.stdout)
    assert out["finite"], f"{ftype}: non-finite logits"
    assert out["max_abs_diff"] <= REL_TOL * out["logit_range"], \
        f"{ftype}: repacked logits differ by {out['max_abs_diff']:.4f} (range {out['logit_range']:.2f})"
    for p in out["parted"]:
        assert p["gap"] <= TIE_GAP, f"{ftype}: repacked kernels pick another token at step {p['step']} " \
                                    f"by a margin of {p['gap']:.4f} (not a near-tie)"


@pytest.mark.parametrize("ftype", NEED_IMATRIX[:3])
def test_types_needing_an_importance_matrix_are_refused(ftype: str, small_path: Path, tmp_path: Path) -> None:
    with pytest.raises(LlamaError, match=ftype):
        quantize(small_path, tmp_path / "x.gguf", ftype)


@pytest.mark.parametrize("extra_bufts", [True, False])
def test_llm_loads_a_quantized_model_with_and_without_repacking(small_q4_path: Path, extra_bufts: bool) -> None:
    from cortex_llama import LLM

    with LLM(small_q4_path, context_size=256, threads=2, use_extra_bufts=extra_bufts) as llm:
        c = llm.complete("hello world", max_tokens=8, temperature=0)
    assert c.usage.completion_tokens >= 1
    assert c.finish_reason in ("length", "end-of-generation")
