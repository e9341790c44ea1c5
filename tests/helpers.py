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
