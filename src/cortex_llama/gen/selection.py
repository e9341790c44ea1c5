"""Token selection: the one place where the engine picks each request's next token.

After a decode, every output row belongs to one request. Rows of plain greedy
chains (a greedy sampler, optionally after logit biases) are picked together by
one numpy ``argmax`` over the step's logits; every other row goes through its
request's :class:`SamplerChain` (:func:`policy.sample`, guarded when the chain
has a grammar). A failure (a PySampler that raises, a grammar that allows no
token) belongs to its row alone.

A row with a draft (speculative decoding) is verified here: the request's
chain picks at the first row, then at the next as long as its pick equals the
drafted token there, so each token is drawn from the target model given the
tokens before it (accepted into the chain one by one, grammar and penalties
included), exactly as without a draft; a greedy chain picks every row's argmax
in one call and keeps the agreeing prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..context import Context
from ..sampling import GreedyPick, SamplerChain
from . import policy

__all__ = ["TokenPicker", "Pick", "Row", "select_tokens"]


class TokenPicker:
    """How one request's tokens are picked, decided once at admission."""

    __slots__ = ("sampler", "greedy", "guarded", "wants_logits", "vectorized", "kept_unless")

    def __init__(self, sampler: SamplerChain, wants_logits: bool) -> None:
        self.sampler = sampler
        # a [logit-bias...] greedy chain's pick: numpy's argmax, biases added
        self.greedy = sampler.greedy_pick
        self.guarded = policy.has_grammar(sampler)
        self.wants_logits = wants_logits
        #: picked with the step's other greedy rows by one argmax
        self.vectorized = self.greedy is not None and not wants_logits
        #: the row's first maximum is the pick unless it is one of these (None: pick
        #: again with the biases added)
        self.kept_unless = self.greedy.kept_unless if self.greedy is not None else None


@dataclass(slots=True)
class Pick:
    """The outcome for one output row: ``token`` (with the row's ``logits`` when
    the request wants logprobs), or the ``error`` that picking raised. After a
    draft, ``more`` holds the tokens picked at the next rows (with their
    logits): the first ``len(more)`` drafted tokens were accepted."""

    token: int = -1
    logits: np.ndarray | None = None
    error: Exception | None = None
    more: list[tuple[int, np.ndarray | None]] | None = None

    def tokens(self) -> list[tuple[int, np.ndarray | None]]:
        """Every picked token with its logits, in order."""
        first = [(self.token, self.logits)]
        return first + self.more if self.more else first

#: (picker, batch row, output index, draft) of one output row
Row = tuple[TokenPicker, int, int, tuple[int, ...]]


def _greedy(picker: TokenPicker) -> GreedyPick:
    assert picker.greedy is not None, "only greedy pickers are vectorized"
    return picker.greedy


def _argmax_rows(ctx: Context, rows: Sequence[Row]) -> list[int]:
    """Greedy picks for the first row of each entry, in one argmax (a row whose
    biases may change its maximum is then picked again with them added)."""
    if len(rows) == 1:
        picker, row, _, _ = rows[0]
        return [_greedy(picker)(ctx.logits(row))]
    table = ctx.all_logits()
    outs = [out for _, _, out, _ in rows]
    sub = table if outs == list(range(table.shape[0])) else table[outs]
    picked: list[int] = sub.argmax(axis=1).tolist()
    for i, (picker, _, out, _) in enumerate(rows):
        unless = picker.kept_unless
        if unless is None or picked[i] in unless:
            picked[i] = _greedy(picker)(table[out])
    return picked


def _accepted(picked: Sequence[int], draft: Sequence[int]) -> int:
    """How many drafted tokens the picks confirm: the picks agree with the draft
    up to there (the pick after them is the target's own)."""
    n = 0
    while n < len(draft) and picked[n] == draft[n]:
        n += 1
    return n


def _verify_greedy(ctx: Context, picker: TokenPicker, out: int, draft: tuple[int, ...]) -> Pick:
    """A greedy chain's picks at a drafted span's rows, in one argmax."""
    table = ctx.all_logits()[out: out + len(draft) + 1]
    greedy = _greedy(picker)
    picked = [t if greedy.keeps(t) else greedy(row)
              for t, row in zip(table.argmax(axis=1).tolist(), table)]
    n = _accepted(picked, draft)
    return Pick(token=picked[0], more=[(t, None) for t in picked[1: n + 1]])


def _verify_sampled(ctx: Context, picker: TokenPicker, row: int, draft: tuple[int, ...]) -> Pick:
    """The chain's picks at a drafted span's rows, one row after the other while
    they agree with the draft (a failure ends the pick with its error)."""
    picked: list[tuple[int, np.ndarray | None]] = []
    try:
        for i in range(len(draft) + 1):
            logits = ctx.logits(row + i) if picker.wants_logits else None
            tok = policy.sample(picker.sampler, ctx, row + i, picker.guarded)
            picked.append((tok, logits))
            if i == len(draft) or tok != draft[i]:
                break
    except Exception as exc:  # noqa: BLE001 - this request's failure only
        if not picked:
            return Pick(error=exc)
    return Pick(token=picked[0][0], logits=picked[0][1], more=picked[1:])


def select_tokens(ctx: Context, rows: Sequence[Row]) -> list[Pick]:
    """One :class:`Pick` per (picker, batch row, output index, draft) of
    ``ctx``'s last decode, in order. Never raises for a row's own failure (it is
    in the pick)."""
    if len(rows) == 1:  # one request: the common case
        picker, _, _, draft = rows[0]
        if picker.vectorized and not draft:
            return [Pick(_argmax_rows(ctx, rows)[0])]
    elif not rows:
        return []
    greedy = [i for i, (p, _, _, draft) in enumerate(rows) if p.vectorized and not draft]
    if len(greedy) == len(rows):  # greedy requests only
        return [Pick(t) for t in _argmax_rows(ctx, rows)]
    picks = [Pick() for _ in rows]
    if greedy:
        for i, tok in zip(greedy, _argmax_rows(ctx, [rows[i] for i in greedy])):
            picks[i].token = tok
    for i, (picker, row, out, draft) in enumerate(rows):
        if picker.vectorized and not draft:
            continue
        if draft:
            picks[i] = (_verify_greedy(ctx, picker, out, draft) if picker.vectorized
                        else _verify_sampled(ctx, picker, row, draft))
            continue
        pick = picks[i]
        try:
            if picker.wants_logits:
                pick.logits = ctx.logits(row)
            pick.token = policy.sample(picker.sampler, ctx, row, picker.guarded)
        except Exception as exc:  # noqa: BLE001 - this request's failure only
            pick.error = exc
    return picks
