"""The engine's scheduler: plain data in, a plain step plan out, no C calls.

It owns the waiting queue, the slots (one KV sequence each) and what each slot
holds, and turns them into a :class:`StepPlan` per step: the KV operations to run
first (drop a slot's cells, trim them, copy another slot's prefix), then the
token spans to decode, each with whether its last entry needs logits. The
runner (:mod:`.runner`) applies a plan to the ``Context``; the engine tells the
scheduler what happened (:meth:`Scheduler.committed`, :meth:`Scheduler.grow`,
:meth:`Scheduler.release`). Nothing here touches llama.cpp, so the policy is
tested without a model (``tests/test_scheduler.py``).

**KV layouts.** With one stream per slot (``per_slot=True``, llama.cpp's
``kv_unified=false``) each slot has ``capacity`` cells of its own: a request's
attention covers only its own cells, which start at position 0 as in a fresh
context; nothing is shared or preempted, and a request that fills its slot ends
with ``finish_reason="length"``. With one unified cache (``per_slot=False``) the
slots share ``capacity`` cells: idle slots' prefixes are dropped least recently
used first when room is needed, and when the running requests outgrow the cache
the youngest is preempted (its cells freed, back to the head of the queue with
its tokens; it resumes by re-evaluating them).

**Policy.** Admission is FIFO. A request pinned to a slot waits for that slot
(and the requests behind it wait too); any other gets the free slot, not
reserved for a slot file operation, whose cached tokens share the longest prefix with it (those tokens are not evaluated again); when a
running slot shares a longer one, its cells are copied instead. Each step
decodes the next token of every running request, then spends the rest of the
``n_batch`` budget on prompt chunks, oldest request first (llama.cpp applies
LoRA adapters to a whole decode, so when running requests differ in LoRA
scales, a step takes one group of them, the group waiting longest first, and a
slot's cells are reused only by a request with the same scales): a new prompt starts
prefilling in the step after it arrives, and a long one delays the running
streams by at most one chunk per step.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np

from . import media

if TYPE_CHECKING:
    from .prompt_cache import PromptCache

__all__ = ["Scheduler", "StepPlan", "KVOp", "Span", "SlotState", "Job", "Schedulable",
           "common_prefix", "SLOT_PROMPT_SIMILARITY"]

#: llama-server's ``--slot-prompt-similarity`` default: a free slot is taken for its
#: cached prefix when that prefix is more than this fraction of the new prompt; else
#: the least recently used slot is (an empty one first), so a prefix of a few
#: shared tokens does not cost a slot its cache (and a prompt-cache save)
SLOT_PROMPT_SIMILARITY = 0.1


class Schedulable(Protocol):
    """What the scheduler reads of a request."""

    prompt_tokens: list[int]
    tokens: list[int]

    @property
    def cancel_requested(self) -> bool: ...

    @property
    def pinned_slot(self) -> int | None:
        """The slot this request must run in (llama-server's ``id_slot``), or None."""

    @property
    def lora_key(self) -> tuple[float, ...]:
        """The LoRA scales it runs with (one per adapter; ``()``: none loaded)."""


@dataclass(frozen=True)
class KVOp:
    """One KV-cache operation on sequence ``seq_id``, run before the step's decode:
    ``clear`` drops all its cells, ``trim`` those at positions >= ``start``,
    ``copy`` gives it sequence ``src``'s cells at positions < ``start`` (in
    per-slot streams: the whole stream is copied; a ``trim`` follows);
    ``save`` puts its state into the prompt cache (``payload``: its tokens and
    LoRA key), ``restore`` loads the cache entry ``payload`` into it."""

    kind: str
    seq_id: int
    start: int = 0
    src: int = -1
    payload: Any = field(default=None, compare=False)


@dataclass
class SlotState:
    """One KV sequence: the tokens cached at its positions 0.. and the job using it."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    job: Job | None = None
    last_used: int = 0
    #: the LoRA scales its cells were computed with (only a request with the same reuses them)
    lora_key: tuple[float, ...] = ()

    @property
    def holds_media(self) -> bool:
        """Some of its cells hold an image or audio chunk (negative entries)."""
        return any(t < 0 for t in self.cached)


@dataclass(eq=False)
class Job:
    """An admitted request in a slot: ``feed`` (prompt + generated tokens) is what
    its sequence must hold; ``slot.cached`` is the part already decoded."""

    req: Schedulable
    slot: SlotState
    feed: list[int]
    order: int  # admission order: the largest is the youngest
    last_step: int = 0  # the last step that decoded it (steps alternate between LoRA groups)
    #: tokens drafted to follow its newest one, verified in the next step (set before
    #: :meth:`Scheduler.plan`, which cuts them to the budget and clears them)
    draft: list[int] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """Entries of ``feed`` not decoded yet."""
        return len(self.feed) - len(self.slot.cached)


class Span(NamedTuple):
    """Entries ``feed[start:start + n]`` of ``job`` at positions ``start..`` of its
    sequence. ``last``: the span ends the feed, so its last entry's logits pick
    the next token. ``is_media``: an image/audio span (evaluated by the projector).
    ``draft``: tokens drafted to follow the span's one entry, decoded after it at
    positions ``start + 1..`` with logits at every row, to be verified.
    (A named tuple: one is made per request and step, and it is the cheapest to make.)"""

    job: Job
    start: int
    n: int
    last: bool
    is_media: bool = False
    draft: tuple[int, ...] = ()


@dataclass(init=False, slots=True)
class StepPlan:
    """What one step does: ``ops`` first, then ``spans`` in one decode (media spans
    through the projector). ``admitted`` (job, cached tokens reused) and
    ``preempted`` are for the engine to report."""

    ops: list[KVOp]
    spans: list[Span]
    admitted: list[tuple[Job, int]]
    preempted: list[Job]
    prefix_copies: int
    lora_key: tuple[float, ...]  # the LoRA scales every span of the step runs with

    def __init__(self) -> None:  # (written out: one is made per step, and this is the cheapest)
        self.ops = []
        self.spans = []
        self.admitted = []
        self.preempted = []
        self.prefix_copies = 0
        self.lora_key = ()

    @property
    def n_tokens(self) -> int:
        return sum(s.n + len(s.draft) for s in self.spans if not s.is_media)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading entries ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64)
    i = int(differ.argmax())
    return i if differ[i] else n


class Scheduler:
    """Queue, slots and KV budget; :meth:`plan` makes each step's :class:`StepPlan`.

    ``capacity``: cells per slot (``per_slot``) or of the whole shared cache.
    ``window_dropped(seq_id)`` tells whether a sliding-window cache dropped a
    sequence's early positions (then its prefix cannot be reused); it is the only
    fact asked of the KV cache.
    """

    def __init__(self, n_slots: int, capacity: int, n_batch: int, *, per_slot: bool,
                 window_dropped: Callable[[int], bool] | None = None,
                 prompt_cache: PromptCache | None = None,
                 slot_similarity: float = SLOT_PROMPT_SIMILARITY) -> None:
        if n_slots < 1 or capacity < 1 or n_batch < n_slots:
            # every running slot's next token goes into each step's batch
            raise ValueError(f"bad scheduler sizes: n_slots={n_slots}, capacity={capacity}, "
                             f"n_batch={n_batch} (needs n_slots >= 1, capacity >= 1, n_batch >= n_slots)")
        self.capacity = capacity
        self.n_batch = n_batch
        self.per_slot = per_slot
        #: a free slot is chosen for its cached prefix only when that covers more than
        #: this fraction of the prompt; else the least recently used one is
        self.slot_similarity = slot_similarity
        self._window_dropped = window_dropped or (lambda _seq: False)
        self.slots = [SlotState(i) for i in range(n_slots)]
        self.jobs: list[Job] = []  # running, in admission order
        self.queue: collections.deque[Schedulable] = collections.deque()  # waiting, FIFO
        #: slots held back from admission (a slot file operation waits for them)
        self.reserved: set[int] = set()
        #: saved prompt states (per-slot streams only: a unified cache has no stream to restore into)
        self.prompt_cache = prompt_cache if per_slot else None
        self._order = 0
        self._tick = 0

    # -- state the engine reads ----------------------------------------------------------
    @property
    def cells_used(self) -> int:
        """Cells held by all slots (an overestimate where a copy shares cells)."""
        return sum([len(s.cached) for s in self.slots])

    @property
    def total_cells(self) -> int:
        return self.capacity * len(self.slots) if self.per_slot else self.capacity

    @property
    def slots_busy(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    def has_work(self) -> bool:
        return bool(self.queue or self.jobs)

    def slot(self, seq_id: int) -> SlotState:
        """Slot ``seq_id``; raises ``ValueError`` outside ``[0, n_slots)``."""
        if not 0 <= seq_id < len(self.slots):
            raise ValueError(f"slot {seq_id} is not in [0, {len(self.slots)})")
        return self.slots[seq_id]

    def set_cached(self, seq_id: int, tokens: Sequence[int], lora_key: tuple[float, ...] = ()) -> None:
        """Slot ``seq_id`` (idle) now holds ``tokens`` at positions 0.., computed
        with the LoRA scales ``lora_key`` (a restored slot file, or ``[]`` once
        its cells were erased)."""
        slot = self.slot(seq_id)
        if slot.job is not None:
            raise ValueError(f"slot {seq_id} is running a request")
        slot.cached[:] = list(tokens)
        slot.lora_key = lora_key
        slot.last_used = self._tick

    # -- the engine reports ------------------------------------------------------------------
    def committed(self, span: Span) -> None:
        """``span`` was evaluated: its entries are now cached in its slot."""
        self.commit([span])

    def commit(self, spans: Sequence[Span]) -> int:
        """:meth:`committed` for each of ``spans``; returns how many of their
        entries are prompt tokens (the rest are generated ones)."""
        prompt = 0
        tick = self._tick
        for job, start, n, *_ in spans:
            slot = job.slot
            if n == 1:
                slot.cached.append(job.feed[start])
            else:
                slot.cached.extend(job.feed[start: start + n])
            slot.last_used = tick
            n_prompt = len(job.req.prompt_tokens)
            if start < n_prompt:
                prompt += min(start + n, n_prompt) - start
        return prompt

    def grow(self, job: Job, token: int) -> bool:
        """``job`` generated ``token``, to be decoded next step. False when that
        token would need a cell beyond the request's capacity (it then ends)."""
        job.feed.append(token)
        return len(job.feed) <= self.capacity

    def verified(self, span: Span, n_accepted: int) -> list[KVOp]:
        """``span``'s draft was verified: its first ``n_accepted`` tokens are now
        in the job's feed (after :meth:`grow`) and their cells stay; the cells
        of the rest are dropped by the returned op."""
        job = span.job
        first = span.start + 1
        job.slot.cached.extend(job.feed[first: first + n_accepted])
        if n_accepted >= len(span.draft):
            return []
        return [KVOp("trim", job.slot.seq_id, start=first + n_accepted)]

    def release(self, job: Job, *, keep_cache: bool = True) -> list[KVOp]:
        """``job`` ended: free its slot. Its cells stay for prefix reuse unless
        ``keep_cache`` is False (then the returned op drops them)."""
        if job in self.jobs:
            self.jobs.remove(job)
        slot = job.slot
        if slot.job is job:
            slot.job = None
        if keep_cache:
            return []
        slot.cached.clear()
        return [KVOp("clear", slot.seq_id)]

    def take_cancelled(self) -> tuple[list[Job], list[Schedulable]]:
        """The running jobs and the waiting requests whose cancel was requested
        (the waiting ones leave the queue; the engine releases the jobs)."""
        jobs = [j for j in self.jobs if j.req.cancel_requested]
        waiting = [r for r in self.queue if r.cancel_requested]
        for r in waiting:
            self.queue.remove(r)
        return jobs, waiting

    # -- planning ------------------------------------------------------------------------------
    def plan(self) -> StepPlan:
        """The next step: admissions (with their KV ops), preemptions, then spans."""
        self._tick += 1
        plan = StepPlan()
        if self.queue:
            self._admit(plan)
        free = 0 if self.per_slot or not self.jobs else self._make_room(plan)
        self._spans(plan, free)
        return plan

    def _admit(self, plan: StepPlan) -> None:
        while self.queue:
            req = self.queue[0]
            pinned = req.pinned_slot
            free = [s for s in self.slots if s.job is None and s.seq_id not in self.reserved
                    and (pinned is None or s.seq_id == pinned)]
            if not free:
                return
            feed = req.prompt_tokens + req.tokens  # a preempted request resumes from here
            slot, reuse = self._best_slot(free, req, feed)
            src, shared = self._best_running(req, feed)
            need = len(feed) - max(reuse, shared) + 1 + len(self.jobs)
            if not self.per_slot and self.jobs:
                running = sum(len(j.slot.cached) for j in self.jobs)
                if self.capacity - running - max(reuse, shared) < need:
                    return  # wait for room (FIFO: the head blocks the rest)
            self.queue.popleft()
            reuse = self._prepare(slot, req, feed, (reuse, src, shared), plan)
            if not self.per_slot:
                self._evict_idle(min(need, self.capacity - reuse), plan, keep=slot)
            self._order += 1
            job = Job(req, slot, feed, self._order)
            slot.job = job
            slot.lora_key = req.lora_key
            slot.last_used = self._tick
            self.jobs.append(job)
            plan.admitted.append((job, reuse))

    def _usable(self, slot: SlotState, req: Schedulable, feed: Sequence[int]) -> int:
        """How many of ``slot``'s cached entries can serve ``feed``: at least one
        entry is left to evaluate (its logits are needed), an image is reused
        whole or not at all, and nothing when a sliding window dropped early
        positions or the cells were computed with other LoRA scales."""
        cached, seq_id = slot.cached, slot.seq_id
        if slot.lora_key != req.lora_key:
            return 0
        n = min(common_prefix(cached, feed), len(feed) - 1)
        n = media.span_start(feed, n)
        if n > 0 and self._window_dropped(seq_id):
            return 0
        return max(n, 0)

    def _best_slot(self, free: list[SlotState], req: Schedulable, feed: list[int]) -> tuple[SlotState, int]:
        """The free slot sharing the longest usable prefix with ``feed`` when that
        prefix is more than :attr:`slot_similarity` of it (least recently used
        among equals), else the least recently used free slot (llama-server's
        rule); with the length of the chosen slot's usable prefix."""
        ranked = sorted(free, key=lambda s: s.last_used)  # least recently used first
        found = [(self._usable(s, req, feed), s) for s in ranked]
        bar = self.slot_similarity * len(feed)
        best_n, best = max(((n, s) for n, s in found if n > bar), key=lambda f: f[0], default=found[0])
        return best, best_n

    def _prepare(self, slot: SlotState, req: Schedulable, feed: list[int],
                 found: tuple[int, SlotState | None, int], plan: StepPlan) -> int:
        """Make ``slot`` hold the longest usable start of ``feed``: its own cells
        (``found``: how many), a running slot's (copied) or a prompt cache
        entry's (restored), saving what it held to the prompt cache first when
        more than half of it goes. Returns how many entries of ``feed`` it holds."""
        reuse, src, shared = found
        cache = self.prompt_cache
        entry, hit = cache.best(feed, req.lora_key, max(reuse, shared)) if cache is not None else (None, 0)
        if reuse < len(slot.cached) // 2:  # most of its cells are about to go (not a chat's next turn)
            self._save(slot, plan)
        if entry is not None and cache is not None:
            cache.take(entry)
            plan.ops += [KVOp("clear", slot.seq_id), KVOp("restore", slot.seq_id, payload=entry)]
            slot.cached[:] = entry.tokens
            slot.lora_key = entry.lora_key
            reuse = hit
        elif src is not None and shared > reuse:
            plan.ops.append(KVOp("clear", slot.seq_id))
            plan.ops.append(KVOp("copy", slot.seq_id, start=shared, src=src.seq_id))
            if self.per_slot:
                plan.ops.append(KVOp("trim", slot.seq_id, start=shared))
            slot.cached[:] = feed[:shared]
            plan.prefix_copies += 1
            return shared
        elif reuse == 0 and slot.cached:
            plan.ops.append(KVOp("clear", slot.seq_id))
            slot.cached.clear()
        if reuse < len(slot.cached):
            plan.ops.append(KVOp("trim", slot.seq_id, start=reuse))
            del slot.cached[reuse:]
        return reuse

    def _save(self, slot: SlotState, plan: StepPlan) -> None:
        """Save ``slot``'s state to the prompt cache before its cells go (text
        slots whose early positions are all there only)."""
        if (self.prompt_cache is None or not slot.cached or slot.holds_media
                or self._window_dropped(slot.seq_id)):
            return
        plan.ops.append(KVOp("save", slot.seq_id, payload=(tuple(slot.cached), slot.lora_key)))

    def _best_running(self, req: Schedulable, feed: list[int]) -> tuple[SlotState | None, int]:
        """The running slot sharing the longest usable prefix with ``feed``."""
        best: SlotState | None = None
        best_n = 0
        for j in self.jobs:
            n = self._usable(j.slot, req, feed)
            if n > best_n:
                best, best_n = j.slot, n
        return best, best_n

    def _evict_idle(self, need: int, plan: StepPlan, keep: SlotState | None = None) -> None:
        """(Unified cache) drop idle slots' prefixes, least recently used first,
        until ``need`` cells are free."""
        idle = [s for s in self.slots if s.job is None and s is not keep and s.cached]
        for s in sorted(idle, key=lambda s: s.last_used):
            if self.capacity - self.cells_used >= need:
                return
            plan.ops.append(KVOp("clear", s.seq_id))
            s.cached.clear()

    def preempt_youngest(self, plan: StepPlan) -> None:
        """(Unified cache) free the youngest running job's cells; its request goes
        back to the head of the queue (it resumes by re-evaluating its tokens)."""
        job = self.jobs[-1]
        plan.ops.append(KVOp("clear", job.slot.seq_id))
        job.slot.cached.clear()
        self.release(job)
        plan.preempted.append(job)
        self.queue.appendleft(job.req)

    def _make_room(self, plan: StepPlan) -> int:
        """(Unified cache) every running request's next entry gets a cell: drop
        idle prefixes, then preempt the youngest, until they do. Returns the
        free cells then."""
        free = self.capacity - self.cells_used
        if free >= len(self.jobs):
            return free  # (every job needs at most one cell)
        while self.jobs:
            need = max(1, sum(1 for j in self.jobs if j.pending == 1))
            if free >= need:
                return free
            self._evict_idle(need, plan)
            free = self.capacity - self.cells_used
            if free >= need or len(self.jobs) == 1:
                return free  # (alone, it may use the whole cache, and ends at its capacity)
            self.preempt_youngest(plan)
            free = self.capacity - self.cells_used
        return free

    def _spans(self, plan: StepPlan, free: int) -> None:
        """Every running request's next token, then prompt chunks (oldest first)
        within ``n_batch`` tokens and the ``free`` cells (of a unified cache).
        A job gets at most one span a step."""
        jobs = self.jobs
        if len(jobs) > 1:
            jobs = self._step_group(plan)
        elif jobs:
            plan.lora_key = jobs[0].req.lora_key
        spans = plan.spans
        prefilling = []
        drafted = False
        for j in jobs:  # the next token of each decoding job (one entry pending)
            a = len(j.slot.cached)
            feed = j.feed
            if len(feed) - a == 1:
                spans.append(Span(j, a, 1, True, feed[a] < 0))
                if j.draft:
                    drafted = True
            else:
                prefilling.append(j)
        if prefilling or drafted:  # (else every job decodes its next token: the steady state)
            self._chunks(spans, prefilling, drafted, free)
        if len(self.jobs) > 1:  # (only steps shared by several LoRA groups read it)
            for span in spans:
                span.job.last_step = self._tick

    def _chunks(self, spans: list[Span], prefilling: list[Job], drafted: bool, free: int) -> None:
        """After the decoding ``spans``: their drafts, then the ``prefilling``
        jobs' prompt chunks, within ``n_batch`` tokens and the ``free`` cells."""
        budget = self.n_batch - len(spans)
        if not self.per_slot:
            budget = min(budget, free - len(spans))
        if budget > 0 and drafted:
            budget = self._drafts(spans, budget)
        for j in prefilling:
            a = len(j.slot.cached)
            left = len(j.feed) - a
            if left <= 1:
                continue
            room = min(left, budget)
            if self.per_slot:
                room = min(room, self.capacity - a)
            if room <= 0:
                if budget <= 0:
                    break
                continue
            n = media.cut(j.feed, a, room)  # an image is evaluated whole (by the projector)
            spans.append(Span(j, a, n, a + n == len(j.feed), j.feed[a] < 0))
            budget -= n

    def _drafts(self, spans: list[Span], budget: int) -> int:
        """Give the decoding spans their jobs' drafts, cut to ``budget`` tokens in
        all and to each job's free cells; returns the budget left. Drafts go
        before prompt chunks: they are few, and each accepted one is a token."""
        for i, span in enumerate(spans):
            job = span.job
            if not job.draft:
                continue
            room = budget if not self.per_slot else min(budget, self.capacity - span.start - 1)
            k = min(len(job.draft), room)
            if k > 0 and not span.is_media:
                spans[i] = span._replace(draft=tuple(job.draft[:k]))
                budget -= k
            job.draft = []
        return budget

    def _step_group(self, plan: StepPlan) -> list[Job]:
        """The running jobs this step decodes: all of them when they share their
        LoRA scales, else the group of the job that waited longest for a step
        (called with two jobs or more)."""
        jobs = self.jobs
        key = jobs[0].req.lora_key
        for j in jobs:
            if j.req.lora_key != key:
                break
        else:  # one group (a loop, not all(): this runs every step)
            plan.lora_key = key
            return jobs
        key = plan.lora_key = min(jobs, key=lambda j: (j.last_step, j.order)).req.lora_key
        return [j for j in jobs if j.req.lora_key == key]
