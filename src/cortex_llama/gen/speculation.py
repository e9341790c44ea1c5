"""Speculative decoding's drafting stage: drafts for the decoding requests, and
how long each request's next draft may be.

Before each plan, :meth:`Speculation.propose` gives every decoding job that
speculates a draft (llama.cpp's n-gram lookup over its own prompt and output,
or its draft model: :class:`~cortex_llama.speculative.Drafter`); the scheduler fits the drafts
into the step's budget, the runner decodes each after its job's newest token
with logits at every row, selection keeps the agreeing prefix, and
:meth:`Speculation.verified` learns from the outcome.

**How long a draft** (plain data: :class:`StepCost`, :func:`best_length`,
:class:`DraftPolicy`): a drafted token costs one more row of the step's decode
and is worth a token only if accepted. The engine fits each decode's time as
``base + per_row * rows`` (:class:`StepCost`). With ``S`` requests decoding a
step's token costs ``base / S + per_row``; with a KV stream per slot and
``S > 1``, llama.cpp computes a longer span of one sequence in a ubatch of its
own (its split keeps the same number of tokens per sequence in a ubatch), so a
draft also pays one more ``base``. Each request estimates its acceptance chance
``a`` from its own drafts (accepted tokens against first rejections, from a
prior of 2 to 1) and drafts the length ``k`` that maximizes
``token * (a + a**2 + ... + a**k) - extra - k * per_row``, up to ``n_max``;
none when that is not positive. Where rows are nearly free (a GPU) that is
``n_max``; on a compute-bound CPU it is a few tokens for one stream, and
nothing with many streams decoding (where a drafted row costs as much as a
token). A request that drafts nothing where drafting could pay probes with one
token after 8 steps (twice as many after each rejected probe, up to 128), to
learn whether its text turned copy-heavy. Drafting itself is timed too: the
seconds a draft call takes per drafted token (a draft model's decodes, with
its catch-up on the tokens taken since a draft the step before; next to
nothing for lookup) add to ``per_row``. A new request starts from the
acceptance of the recent drafts (worth 3 drafts of its own), and a probe is
not made where a draft model would first have to catch up on more than 2
tokens' worth of history (its per-token price measured on earlier catch-ups):
so a draft model that is rarely right stops costing anything.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..speculative import Drafter, DraftRequest
from .scheduler import Job

__all__ = ["DraftPolicy", "StepCost", "Speculation"]

PROBE_EVERY = 8  # steps before a request that drafts nothing probes with one token
PROBE_EVERY_MAX = 128  # each rejected probe doubles the wait, up to this
PRIOR = (2.0, 1.0)  # (accepted tokens, rejections) before a request's first draft
PROBE_CHANCE = 0.95  # probes only where drafts accepted this often would pay
PROBE_CATCH_UP = 2.0  # ... and where the draft model's catch-up costs at most this many tokens
PRIOR_WEIGHT = 3.0  # a new request starts from the recent drafts' acceptance, worth this many
LEARN_DECAY = 0.98  # per draft, for that recent acceptance


class StepCost:
    """A decode's time as ``base + per_row * rows``, fitted online by
    exponentially weighted least squares over the recent decodes; until they
    vary in size, ``base`` is 0.4 and ``per_row`` 0.6 of a one-row step (as
    measured on 2 CPU cores)."""

    __slots__ = ("decay", "w", "sn", "st", "snn", "snt")

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self.w = self.sn = self.st = self.snn = self.snt = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self.w = d * self.w + 1.0
        self.sn = d * self.sn + rows
        self.st = d * self.st + seconds
        self.snn = d * self.snn + rows * rows
        self.snt = d * self.snt + rows * seconds

    def fit(self) -> tuple[float, float]:
        """(base, per_row) in seconds (relative units before any decode)."""
        if self.w == 0.0:
            return 0.4, 0.6
        mean_n, mean_t = self.sn / self.w, self.st / self.w
        var = self.snn / self.w - mean_n * mean_n
        per_step = mean_t / max(mean_n, 1.0)
        if var < 0.25:  # every decode had the same size: the prior split
            return 0.4 * mean_t, 0.6 * per_step
        per_row = (self.snt / self.w - mean_n * mean_t) / var
        per_row = min(max(per_row, 0.0), per_step)
        return max(mean_t - per_row * mean_n, 0.0), per_row


def best_length(chance: float, token: float, extra: float, per_row: float, n_max: int) -> int:
    """The draft length with the largest expected time saved: each accepted
    token saves ``token`` (the cost of a step's token), each drafted one costs
    ``per_row``, a draft at all costs ``extra``; 0 when no length saves time."""
    best, best_gain = 0, 0.0
    gain, p = -extra, 1.0
    for k in range(1, n_max + 1):
        p *= chance
        gain += token * p - per_row
        if gain > best_gain:
            best, best_gain = k, gain
        if token * p < per_row:
            break  # later tokens only lose
    return best


class DraftPolicy:
    """One request's estimate of its acceptance chance, and the draft length
    it implies (``n_max`` at most; drafts shorter than ``n_min`` are not made)."""

    __slots__ = ("n_max", "n_min", "accepted", "rejected", "idle", "wait", "probing")

    def __init__(self, n_max: int, n_min: int = 0, prior: tuple[float, float] = PRIOR) -> None:
        self.n_max = n_max
        self.n_min = n_min
        self.accepted, self.rejected = prior
        self.idle = 0  # steps since its last draft
        self.wait = PROBE_EVERY  # steps before the next probe
        self.probing = False  # the last draft was a probe

    @property
    def chance(self) -> float:
        """The estimated chance that a drafted token is accepted."""
        return self.accepted / (self.accepted + self.rejected)

    def allowed(self, token: float, extra: float, per_row: float, catch_up: float = 0.0) -> int:
        """The draft length worth verifying now (0: do not draft), given what a
        step's token, a draft and a drafted row cost (see :func:`best_length`);
        ``catch_up``: what bringing a draft model up to the history would cost
        first (a probe is not worth more than :data:`PROBE_CATCH_UP` tokens)."""
        k = best_length(self.chance, token, extra, per_row, self.n_max)
        if k < 1:
            if best_length(PROBE_CHANCE, token, extra, per_row, self.n_max) < 1 or catch_up > PROBE_CATCH_UP * token:
                return 0  # drafting cannot pay now, even for copy-heavy text: no probe
            self.idle += 1
            if self.idle < self.wait:
                return 0
            k = 1  # a probe
        self.probing = k == 1 and self.idle > 0
        self.idle = 0
        return max(k, self.n_min)

    def update(self, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens had its first ``accepted`` taken."""
        if drafted <= 0:
            return
        self.accepted += accepted
        if accepted < drafted:
            self.rejected += 1
        if self.probing:  # a rejected probe waits twice as long for the next, a taken one resets
            self.wait = PROBE_EVERY if accepted else min(2 * self.wait, PROBE_EVERY_MAX)
            self.probing = False


class _State:
    """One speculating job: its tokens as int32 (for the drafter) and its draft policy."""

    __slots__ = ("history", "filled", "policy", "drafted_at")

    def __init__(self, capacity: int, policy: DraftPolicy) -> None:
        self.history = np.zeros(capacity + 1, dtype=np.int32)
        self.filled = 0
        self.policy = policy
        self.drafted_at = -1  # the history length at its last draft


class Speculation:
    """Drafts for the engine's jobs from ``drafter`` (one sequence per slot).

    ``n_max``/``n_min``: the longest draft, and the shortest worth verifying;
    ``adaptive=False`` drafts every match up to ``n_max`` (llama-server's way).
    Counts ``drafted`` and ``accepted`` tokens; each request's own counts go
    to its ``timings`` (``draft_n``, ``draft_n_accepted``).
    """

    def __init__(self, drafter: Drafter, capacity: int, *, n_max: int = 16, n_min: int = 0,
                 adaptive: bool = True, per_slot: bool = True) -> None:
        if n_max < 1 or not 0 <= n_min <= n_max:
            raise ValueError(f"bad draft sizes: draft_max={n_max}, draft_min={n_min} "
                             "(needs draft_max >= 1 and 0 <= draft_min <= draft_max)")
        self.drafter = drafter
        self.capacity = capacity
        self.n_max = n_max
        self.n_min = n_min
        #: False: every match is drafted up to n_max, as llama-server does (no cost model)
        self.adaptive = adaptive
        #: a KV stream per slot: llama.cpp gives a longer span its own ubatch when others decode
        self.per_slot = per_slot
        self.drafted = 0
        self.accepted = 0
        #: the decodes' cost model (the engine reports each token decode)
        self.cost = StepCost()
        #: seconds a draft call takes per drafted token (exponentially weighted)
        self.draft_row = 0.0
        self.drafts_timed = 0
        #: seconds a draft model takes per token it catches up on (the first measurement, then EW)
        self.catch_up: float | None = None
        #: recent drafts' (accepted tokens, rejections), decayed: a new request's prior
        self.learned = list(PRIOR)
        self._states: dict[int, _State] = {}  # by id(job)

    def start(self, job: Job) -> None:
        """``job`` was admitted: it speculates unless its request opted out."""
        req: Any = job.req
        if not getattr(req.params, "speculative", True):
            return
        accepted, rejected = self.learned
        chance = accepted / (accepted + rejected)
        prior = (PRIOR_WEIGHT * chance, PRIOR_WEIGHT * (1.0 - chance))
        self._states[id(job)] = _State(self.capacity, DraftPolicy(self.n_max, self.n_min, prior))
        prompt = [t for t in job.feed if t >= 0]
        self.drafter.begin(job.slot.seq_id, np.asarray(prompt, dtype=np.int32))

    def stop(self, job: Job) -> None:
        """``job`` ended or was preempted."""
        self._states.pop(id(job), None)

    def propose(self, jobs: list[Job]) -> None:
        """Set each speculating job's ``draft`` for the next step (empty when it
        prefills, when a draft would not pay for its rows, or when nothing
        drafts). The jobs that may draft are drafted together (a draft model
        decodes one batch a step for all of them)."""
        costs = self._costs(sum(1 for j in jobs if j.pending == 1))
        wanted: list[tuple[Job, _State, DraftRequest]] = []
        for job in jobs:
            job.draft = []
            state = self._states.get(id(job))
            if state is None:
                continue
            request = self._request(job, state, costs)
            if request is not None:
                wanted.append((job, state, request))
        if wanted:
            self._draft(wanted)

    def _costs(self, streams: int) -> tuple[float, float, float] | None:
        """(a step's token, a draft's extra, a drafted row) for ``streams``
        decoding requests; None when drafting is not adaptive."""
        if not self.adaptive:
            return None
        base, per_row = self.cost.fit()
        extra = base if self.per_slot and streams > 1 else 0.0
        return base / max(streams, 1) + per_row, extra, per_row + self.draft_row

    def _request(self, job: Job, state: _State, costs: tuple[float, float, float] | None) -> DraftRequest | None:
        """``job``'s draft request for this step, None when it should not draft."""
        feed = job.feed
        n_hist = len(feed) - 1
        if n_hist != len(job.slot.cached) or feed[-1] < 0:
            return None  # still prefilling (or its newest entry is media)
        req: Any = job.req
        room = min(req.params.max_tokens - len(req.tokens) - 1, self.capacity - len(feed))
        lag = n_hist - max(state.drafted_at, 0)  # tokens a draft model would catch up on
        catch_up = lag * (self.catch_up or 0.0)
        n_max = min(self.n_max if costs is None else state.policy.allowed(*costs, catch_up=catch_up), room)
        if n_max < max(1, self.n_min):
            return None
        if state.filled < n_hist:
            # media entries (negative ids of any size) become -1: never a token, never drafted
            state.history[state.filled:n_hist] = np.maximum(np.asarray(feed[state.filled:n_hist], np.int64), -1)
            state.filled = n_hist
        return DraftRequest(job.slot.seq_id, state.history, n_hist, feed[-1], n_max)

    def _draft(self, wanted: list[tuple[Job, _State, DraftRequest]]) -> None:
        """Draft for ``wanted`` together and time it (per drafted token)."""
        spent = 0.0
        for _, state, request in wanted:
            # a draft model's catch-up counts as the draft's cost after a draft in the step
            # before (the tokens it took); a prompt's, or one after a pause, does not
            t0 = time.perf_counter()
            self.drafter.sync(request.seq_id, request.history, request.n_history)
            seconds = time.perf_counter() - t0
            lag = request.n_history - max(state.drafted_at, 0)
            if 0 <= lag <= self.n_max + 1:
                spent += seconds
            elif lag >= 8:  # a prompt's catch-up, or one after a pause: the per-token price
                self.catch_up = seconds / lag if self.catch_up is None else 0.9 * self.catch_up + 0.1 * seconds / lag
            state.drafted_at = request.n_history
        t0 = time.perf_counter()
        drafts = self.drafter.draft_many([request for _, _, request in wanted])
        spent += time.perf_counter() - t0
        per_token = spent / max(sum(len(d) for d in drafts), 1)
        # the first measurement stands alone: from 0, a draft model's cost would be learned
        # over tens of drafts, each paid for
        self.draft_row = per_token if self.drafts_timed == 0 else 0.9 * self.draft_row + 0.1 * per_token
        self.drafts_timed += 1
        for (job, _, _), draft in zip(wanted, drafts):
            for i, tok in enumerate(draft):
                if tok < 0:  # media entries are never drafted
                    draft = draft[:i]
                    break
            job.draft = draft if len(draft) >= max(1, self.n_min) else []

    def decoded(self, rows: int, seconds: float) -> None:
        """A token decode of ``rows`` rows took ``seconds`` (for the cost model)."""
        self.cost.observe(rows, seconds)

    def verified(self, job: Job, drafted: int, accepted: int) -> None:
        """``job``'s draft of ``drafted`` tokens had ``accepted`` of them taken."""
        state = self._states.get(id(job))
        if state is None or drafted == 0:
            return
        state.policy.update(drafted, accepted)
        self.learned[0] = LEARN_DECAY * self.learned[0] + accepted
        self.learned[1] = LEARN_DECAY * self.learned[1] + (1.0 if accepted < drafted else 0.0)
        self.drafter.accept(job.slot.seq_id, accepted)
        self.drafted += drafted
        self.accepted += accepted
        timings: Any = getattr(job.req, "timings", None)
        if timings is not None:
            timings.draft_n += drafted
            timings.draft_n_accepted += accepted
