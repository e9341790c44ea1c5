"""Token selection: the one place where the engine picks each request's next token.

After a decode, every output row belongs to one request. Rows of plain greedy
chains (a greedy sampler, optionally after logit biases) are picked together by
one numpy ``argmax`` over the step's logits; every other row goes through its
request's :class:`SamplerChain` (:func:`policy.sample`, guarded when the chain
has a grammar). A failure (a PySampler that raises, a grammar that allows no
token) belongs to its row alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..context import Context
from ..sampling import SamplerChain, biased_argmax
from . import policy

__all__ = ["TokenPicker", "Pick", "select_tokens"]


class TokenPicker:
    """How one request's tokens are picked, decided once at admission."""

    __slots__ = ("sampler", "biases", "guarded", "wants_logits", "vectorized")

    def __init__(self, sampler: SamplerChain, wants_logits: bool) -> None:
        self.sampler = sampler
        # (ids, biases) of a [logit-bias...] greedy chain: picked by numpy argmax
        self.biases = sampler.argmax_biases
        self.guarded = policy.has_grammar(sampler)
        self.wants_logits = wants_logits
        #: picked with the step's other greedy rows by one argmax
        self.vectorized = self.biases is not None and not wants_logits


@dataclass
class Pick:
    """The outcome for one output row: ``token`` (with the row's ``logits`` when
    the request wants logprobs), or the ``error`` that picking raised."""

    token: int = -1
    logits: np.ndarray | None = None
    error: Exception | None = None


def _argmax_rows(ctx: Context, rows: Sequence[tuple[TokenPicker, int, int]]) -> list[int]:
    """Greedy picks for (picker, batch row, output index) entries, in one argmax."""
    if len(rows) == 1:
        picker, row, _ = rows[0]
        logits = ctx.logits(row)
        return [biased_argmax(logits, picker.biases) if picker.biases else int(logits.argmax())]
    table = ctx.all_logits()
    if any(p.biases for p, _, _ in rows):
        return [biased_argmax(table[out], p.biases) if p.biases else int(table[out].argmax())
                for p, _, out in rows]
    outs = [out for _, _, out in rows]
    sub = table if outs == list(range(table.shape[0])) else table[outs]
    return sub.argmax(axis=1).tolist()  # type: ignore[no-any-return]


def select_tokens(ctx: Context, rows: Sequence[tuple[TokenPicker, int, int]]) -> list[Pick]:
    """One :class:`Pick` per (picker, batch row, output index) of ``ctx``'s last
    decode, in order. Never raises for a row's own failure (it is in the pick)."""
    if len(rows) == 1 and rows[0][0].vectorized:  # one greedy request: the common case
        return [Pick(token=_argmax_rows(ctx, rows)[0])]
    picks = [Pick() for _ in rows]
    greedy = [i for i, (p, _, _) in enumerate(rows) if p.vectorized]
    if greedy:
        for i, tok in zip(greedy, _argmax_rows(ctx, [rows[i] for i in greedy])):
            picks[i].token = tok
    for i, (picker, row, _) in enumerate(rows):
        if picker.vectorized:
            continue
        pick = picks[i]
        try:
            if picker.wants_logits:
                pick.logits = ctx.logits(row)
            pick.token = policy.sample(picker.sampler, ctx, row, picker.guarded)
        except Exception as exc:  # noqa: BLE001 - this request's failure only
            pick.error = exc
    return picks
