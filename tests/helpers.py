"""Small generation loops over the object layer, shared by the tests."""

from __future__ import annotations

import numpy as np

from cortex_llama import Batch, Context, SamplerChain


def prefill(ctx: Context, tokens, seq_id: int = 0, batch: Batch | None = None) -> None:
    batch = batch or ctx.new_batch()
    batch.clear()
    batch.add_many(tokens, 0, seq_id)
    ctx.decode(batch)


def greedy_argmax(ctx: Context, prompt, n: int, seq_id: int = 0) -> list[int]:
    """Greedy by numpy argmax of the logits, one sequence."""
    batch = ctx.new_batch()
    prefill(ctx, prompt, seq_id, batch)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(n):
        tok = int(np.argmax(ctx.logits()))
        out.append(tok)
        batch.clear()
        batch.add(tok, pos, seq_id, logits=True)
        pos += 1
        ctx.decode(batch)
    return out


def generate(ctx: Context, chain: SamplerChain, prompt, n: int) -> list[int]:
    batch = ctx.new_batch()
    prefill(ctx, prompt, 0, batch)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(n):
        tok = chain.sample(ctx)
        out.append(tok)
        batch.clear()
        batch.add(tok, pos, 0, logits=True)
        pos += 1
        ctx.decode(batch)
    return out


def same_greedy(got, solo, gap: float = 2e-3, first: int | None = None) -> bool:
    """``got``'s tokens equal ``solo``'s (a Completion made with logprobs >= 2), or
    they part only where ``solo``'s two best tokens were within ``gap`` in log
    probability. Batch composition changes CPU float rounding (~1e-4 in the
    logprobs of the f32 test models), which can flip a near tie. Quantized
    models round activations to 8 bits, which turns those differences into steps
    of ~0.05 that then drift: compare them over their ``first`` tokens with a
    larger ``gap``."""
    a, b = got.tokens[:first], solo.tokens[:first]
    if a == b:
        return True
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if k is None:  # one is a prefix of the other: it ended (eog) on a near tie
        k = min(len(a), len(b))
        if k >= len(solo.logprobs):
            return False
    top = solo.logprobs[k].top
    return len(top) >= 2 and top[0][1] - top[1][1] < gap
