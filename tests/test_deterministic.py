"""ModelConfig.deterministic: greedy output independent of what runs beside a
request or ran before it, token for token (no near-tie rule), on quantized models.

The default settings (flash attention auto) are llama.cpp's and match native
output on a solo run; requests batched together then may part from their solo
runs at near ties (see README "Same output"). Deterministic mode trades speed
for exact batch invariance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_llama import LLM

PROMPTS = [("Tell me about the sea. " * (1 + i % 5)) + f"Story {i}:" for i in range(8)]


def _solo_and_together(path: Path, n_tokens: int, **config: object) -> tuple[list[list[int]], list[list[int]]]:
    with LLM(path, threads=2, n_seq_max=8, context_size=512, deterministic=True, **config) as llm:
        ban = {t: float("-inf") for t in range(llm.model.n_vocab) if llm.model.vocab.is_eog(t)}
        # solo, one after another: later prompts reuse earlier ones' cached prefixes
        solo = [llm.complete(p, temperature=0, max_tokens=n_tokens, logit_bias=ban).tokens for p in PROMPTS]
        reqs = [llm.submit(p, temperature=0, max_tokens=n_tokens, logit_bias=ban) for p in PROMPTS]
        together = [r.result().tokens for r in reqs]
    return solo, together


def test_concurrent_equals_solo_on_q4_0(small_q4_path: Path) -> None:
    """Q4_0 is the type CPU repacking would give a 1-3-row and a 4+-row kernel."""
    solo, together = _solo_and_together(small_q4_path, 24)
    assert together == solo


@pytest.mark.real
def test_concurrent_equals_solo_on_the_real_model(real_model_path: Path) -> None:
    solo, together = _solo_and_together(real_model_path, 24)
    assert together == solo


@pytest.mark.parametrize("bad, field", [({"flash_attn": True}, "flash_attn=True"),
                                        ({"kv_unified": True}, "kv_unified=True"),
                                        ({"use_extra_bufts": True}, "use_extra_bufts=True")])
def test_conflicting_settings_raise(tiny_path: Path, bad: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"deterministic=True cannot be honoured with {field}"):
        LLM(tiny_path, deterministic=True, **bad)
