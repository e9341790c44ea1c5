"""Speculative decoding's drafting stage: drafts for the decoding requests, and
how long each request's next draft may be.

Before each plan, :meth:`Speculation.propose` gives every decoding job that
speculates a draft (llama.cpp's n-gram lookup over its own prompt and output,
:class:`~cortex_llama.speculative.NgramDrafter`); the scheduler fits the drafts
into the step's budget, the runner decodes each after its job's newest token
with logits at every row, selection keeps the agreeing prefix, and
:meth:`Speculation.verified` learns from the outcome.

**Adaptive length** (:class:`DraftLength`, plain data): a draft that was taken
whole doubles the next one's limit (up to ``n_max``); one cut short sets it to
the accepted length plus one; one rejected at its first token halves it and
pauses drafting for 2, 4, ... 32 steps after consecutive misses. On natural
text, where lookups rarely match or miss at once, a request then drafts
rarely and short, so speculation costs about nothing; on copy-heavy text the
drafts grow to ``n_max``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .scheduler import Job

if TYPE_CHECKING:
    from ..speculative import NgramDrafter

__all__ = ["DraftLength", "Speculation"]

MAX_PAUSE = 32  # steps without drafting after repeated misses, at most


class DraftLength:
    """How many tokens one request may draft next (``n_max`` at most; drafts
    shorter than ``n_min`` are not verified)."""

    __slots__ = ("n_max", "n_min", "limit", "pause", "misses")

    def __init__(self, n_max: int, n_min: int = 0) -> None:
        self.n_max = n_max
        self.n_min = n_min
        self.limit = n_max
        self.pause = 0  # steps left without drafting
        self.misses = 0  # drafts in a row rejected at their first token

    def allowed(self) -> int:
        """The longest draft allowed at this step (0: do not draft now)."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        return max(self.limit, self.n_min)

    def update(self, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens had its first ``accepted`` taken."""
        if drafted <= 0:
            return
        if accepted >= drafted:
            self.limit = min(self.n_max, self.limit * 2)
            self.misses = 0
        elif accepted == 0:
            self.misses += 1
            self.limit = max(1, self.limit // 2)
            if self.misses >= 2:
                self.pause = min(1 << (self.misses - 1), MAX_PAUSE)
        else:
            self.limit = max(1, min(self.n_max, accepted + 1))
            self.misses = 0


class _State:
    """One speculating job: its tokens as int32 (for the drafter) and its length policy."""

    __slots__ = ("history", "filled", "length")

    def __init__(self, capacity: int, length: DraftLength) -> None:
        self.history = np.zeros(capacity + 1, dtype=np.int32)
        self.filled = 0
        self.length = length


class Speculation:
    """Drafts for the engine's jobs from ``drafter`` (one sequence per slot).

    ``n_max``/``n_min``: the longest draft, and the shortest worth verifying.
    Counts ``drafted`` and ``accepted`` tokens; each request's own counts go
    to its ``timings`` (``draft_n``, ``draft_n_accepted``).
    """

    def __init__(self, drafter: NgramDrafter, capacity: int, *, n_max: int = 16, n_min: int = 0) -> None:
        if n_max < 1 or not 0 <= n_min <= n_max:
            raise ValueError(f"bad draft sizes: draft_max={n_max}, draft_min={n_min} "
                             "(needs draft_max >= 1 and 0 <= draft_min <= draft_max)")
        self.drafter = drafter
        self.capacity = capacity
        self.n_max = n_max
        self.n_min = n_min
        self.drafted = 0
        self.accepted = 0
        self._states: dict[int, _State] = {}  # by id(job)

    def start(self, job: Job) -> None:
        """``job`` was admitted: it speculates unless its request opted out."""
        req: Any = job.req
        if not getattr(req.params, "speculative", True):
            return
        self._states[id(job)] = _State(self.capacity, DraftLength(self.n_max, self.n_min))
        prompt = [t for t in job.feed if t >= 0]
        self.drafter.begin(job.slot.seq_id, np.asarray(prompt, dtype=np.int32))

    def stop(self, job: Job) -> None:
        """``job`` ended or was preempted."""
        self._states.pop(id(job), None)

    def propose(self, jobs: list[Job]) -> None:
        """Set each speculating job's ``draft`` for the next step (empty when it
        prefills, pauses or finds no match)."""
        for job in jobs:
            state = self._states.get(id(job))
            job.draft = [] if state is None else self._draft(job, state)

    def _draft(self, job: Job, state: _State) -> list[int]:
        feed = job.feed
        n_hist = len(feed) - 1
        if n_hist != len(job.slot.cached) or feed[-1] < 0:
            return []  # still prefilling (or its newest entry is media)
        req: Any = job.req
        room = min(req.params.max_tokens - len(req.tokens) - 1, self.capacity - len(feed))
        n_max = min(state.length.allowed(), room)
        if n_max < max(1, self.n_min):
            return []
        if state.filled < n_hist:
            # media entries (negative ids of any size) become -1: never a token, never drafted
            state.history[state.filled:n_hist] = np.maximum(np.asarray(feed[state.filled:n_hist], np.int64), -1)
            state.filled = n_hist
        draft = self.drafter.draft(job.slot.seq_id, state.history, n_hist, feed[-1], n_max)
        for i, tok in enumerate(draft):
            if tok < 0:  # media entries are never drafted
                draft = draft[:i]
                break
        return draft if len(draft) >= max(1, self.n_min) else []

    def verified(self, job: Job, drafted: int, accepted: int) -> None:
        """``job``'s draft of ``drafted`` tokens had ``accepted`` of them taken."""
        state = self._states.get(id(job))
        if state is None or drafted == 0:
            return
        state.length.update(drafted, accepted)
        self.drafter.accept(job.slot.seq_id, accepted)
        self.drafted += drafted
        self.accepted += accepted
        timings: Any = getattr(job.req, "timings", None)
        if timings is not None:
            timings.draft_n += drafted
            timings.draft_n_accepted += accepted
