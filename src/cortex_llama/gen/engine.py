"""The generation engine: continuous batching over one context.

One background thread owns the :class:`Context`, one :class:`Batch`,
``n_seq_max`` slots (one KV sequence each) and the unified KV cache of
``n_ctx`` cells that the slots share. Each step of its loop is **one**
``llama_decode`` that mixes the next token of every running request with
chunks of prompts being prefilled, under a per-step budget of ``n_batch``
tokens: a long prompt delays running streams by at most one chunk.

Admission is FIFO: the head of the queue gets a free slot when its remaining
prompt (plus one step of growth for every running request) fits the free KV
cells, after dropping the cached prefixes of idle slots, least recently used
first. A new request goes to the free slot whose cached tokens share the
longest prefix with it; those tokens are not evaluated again (unless
``seq_pos_min`` shows that a sliding-window cache dropped positions, then the
slot is re-processed from scratch). When a *running* request's cells share a
longer prefix, they are shared with the new request's sequence (``seq_cp``)
instead of being computed again.

**KV pressure.** When the running requests together need more cells than the
cache has, the engine *preempts the youngest* running request (the last one
admitted): its KV cells are freed and it goes back to the head of the queue,
keeping its tokens, text and sampler state; when room returns it re-evaluates
its prompt plus what it generated so far and continues where it stopped. Its
stream only pauses, and greedy output is the same as running alone. No
request is lost. A single request may grow to the whole cache
(prompt + generated tokens = ``n_ctx``), and then ends with
``finish_reason="length"``.

Failures are per request: a sampler that raises, or a grammar that rejects
every token, fails that request alone; a decode error fails the requests of
that batch; the engine keeps serving. :meth:`Engine.close` ends every
queued or running request with :class:`ClosedError`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

from ..batch import Batch
from ..context import Context
from ..errors import ClosedError, KVCacheFullError, QueueFullError
from . import media, policy
from .params import FINISH_CANCELLED, FINISH_LENGTH
from .request import Request

__all__ = ["Engine"]

METRIC_COUNTERS = ("requests_total", "requests_finished", "requests_failed", "requests_cancelled",
                   "prompt_tokens_total", "prompt_tokens_reused", "prompt_tokens_evaluated",
                   "generated_tokens_total", "decodes_total", "decode_tokens_total",
                   "batched_decodes_total", "preemptions_total", "prefix_copies_total")


class _Slot:
    """One KV sequence: the tokens cached in it and the job using it."""

    __slots__ = ("seq_id", "cached", "job", "last_used")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens at positions 0.. of this sequence's KV cells
        self.job: _Job | None = None
        self.last_used = 0


class _Job:
    """An admitted request in a slot: ``feed`` (prompt + generated tokens) is what
    its sequence must hold; ``slot.cached`` is the part already decoded."""

    __slots__ = ("req", "slot", "feed", "order", "biases", "guarded", "logprobs", "row", "out")

    def __init__(self, req: Request, slot: _Slot, feed: list[int], order: int) -> None:
        self.req = req
        self.slot = slot
        self.feed = feed
        self.order = order  # admission order: the largest is the youngest
        # (ids, biases) of a [logit-bias...] greedy chain, sampled by numpy argmax
        self.biases = req.sampler.argmax_biases
        self.guarded = policy.has_grammar(req.sampler)
        self.logprobs = req.params.logprobs is not None
        self.row = -1  # batch entry with this job's logits in the current step
        self.out = -1  # its index among the step's outputs


class Engine:
    """Slots, admission, KV budget, prefix cache and the step loop (one thread).

    ``Engine(ctx)`` takes ownership of using ``ctx`` (nobody else may decode on
    it while the engine runs); :meth:`start` starts the thread, :meth:`submit`
    queues a :class:`Request`, :meth:`close` stops. The caller checks a
    request's prompt against :attr:`n_ctx` before submitting.
    """

    def __init__(self, ctx: Context, *, max_queue: int | None = None, projector: Any = None) -> None:
        self.ctx = ctx
        self.projector = projector  # a multimodal.Projector: evaluates media spans (gen.media)
        self.n_ctx = ctx.n_ctx
        self.n_batch = ctx.n_batch
        self.max_queue = max_queue
        self._batch: Batch = ctx.new_batch()
        self._slots = [_Slot(i) for i in range(ctx.n_seq_max)]
        self._jobs: list[_Job] = []  # running, in admission order
        self._queue: collections.deque[Request] = collections.deque()  # waiting, FIFO
        # re-entrant: a stream collected (and so cancelled) by a GC pass that runs
        # inside the engine thread while it holds the lock must not deadlock
        self._cv = threading.Condition(threading.RLock())
        self._closing = False
        self._cancels = False  # set by wake(): some request asked to be cancelled
        self._thread: threading.Thread | None = None
        self._order = 0
        self._tick = 0
        self.stats: dict[str, int] = {k: 0 for k in METRIC_COUNTERS}

    # -- control (any thread) -----------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cortex-llama-engine", daemon=True)
            self._thread.start()

    def submit(self, req: Request) -> None:
        """Queue ``req``. Raises :class:`ClosedError` after :meth:`close` and
        :class:`QueueFullError` when ``max_queue`` requests already wait."""
        self.submit_many([req])

    def submit_many(self, reqs: list[Request]) -> None:
        """Queue ``reqs`` together (they can start in the same step), all or none.
        Raises like :meth:`submit`."""
        with self._cv:
            if self._closing:
                raise ClosedError("the engine is closed (LLM unloaded)")
            waiting = [r for r in reqs if r.params.max_tokens > 0]
            if self.max_queue is not None and len(self._queue) + len(waiting) > self.max_queue:
                raise QueueFullError(f"{len(self._queue)} requests are already waiting "
                                     f"(ModelConfig.max_queue={self.max_queue})")
            for req in reqs:
                self._count("requests_total")
                self._count("prompt_tokens_total", len(req.prompt_tokens))
                if req.params.max_tokens == 0:
                    self._count("requests_finished")
                    req.admitted(0)
                    req.finish(FINISH_LENGTH)
            self._queue.extend(waiting)
            self._cv.notify()

    def wake(self) -> None:
        """A request was cancelled: make the loop look at its requests now."""
        with self._cv:
            self._cancels = True
            self._cv.notify()

    def close(self) -> None:
        """Stop the loop and end every queued or running request with
        :class:`ClosedError`. Idempotent; waits for the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self.ctx.abort()  # a long decode in flight stops early
            self._thread.join()
        else:
            self._fail_everything()

    def _count(self, name: str, n: int = 1) -> None:
        """Add to a counter. Every counter changes here, under the engine's lock
        (submitters count from their threads, the loop from its own)."""
        with self._cv:
            self.stats[name] += n

    def metrics(self) -> dict[str, float]:
        """Counters and gauges (see ``LLM.metrics``)."""
        with self._cv:
            out: dict[str, float] = {k: float(v) for k, v in self.stats.items()}
        busy = sum(1 for s in self._slots if s.job is not None)
        out.update(requests_running=float(len(self._jobs)), queue_depth=float(len(self._queue)),
                   slots_busy=float(busy), slots_total=float(len(self._slots)),
                   kv_cells_used=float(self._cells_used()), kv_cells_total=float(self.n_ctx))
        return out

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closing and not self._queue and not self._jobs \
                            and not self._cancels:
                        self._cv.wait()
                    if self._closing:
                        break
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the service
                    self._fail_running(exc)
        finally:
            self._fail_everything()

    def _fail_everything(self) -> None:
        with self._cv:
            waiting = list(self._queue)
            self._queue.clear()
        for job in list(self._jobs):
            self._end_job(job, error=ClosedError("the LLM was closed while this request ran"))
        for req in waiting:
            self._count("requests_failed")
            req.fail(ClosedError("the LLM was closed while this request waited"))

    def _fail_running(self, exc: BaseException) -> None:
        """End the running jobs with ``exc`` and drop their cells (their state is
        unknown after an unexpected error)."""
        for job in list(self._jobs):
            self.ctx.seq_rm(job.slot.seq_id, -1, -1)
            job.slot.cached.clear()
            self._end_job(job, error=exc)

    def _cells_used(self) -> int:
        return sum(len(s.cached) for s in self._slots)

    def _step(self) -> None:
        self._tick += 1
        if self._cancels:
            self._cancels = False
            self._drop_cancelled()
        if self._queue:
            self._admit()
        if not self._jobs:
            if self._queue:  # nothing runs and the head cannot start: should not happen
                time.sleep(0.001)
            return
        plan = self._plan()
        if not plan:
            return
        self._decode(plan)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.req.cancel_requested]:
            self._end_job(job, reason=FINISH_CANCELLED)
        with self._cv:
            gone = [r for r in self._queue if r.cancel_requested]
            for r in gone:
                self._queue.remove(r)
        for r in gone:
            self._count("requests_cancelled")
            r.finish(FINISH_CANCELLED)

    # -- admission ------------------------------------------------------------------------
    def _admit(self) -> None:
        while True:
            with self._cv:
                if not self._queue:
                    return
                req = self._queue[0]
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            feed = req.prompt_tokens + req.tokens  # a preempted request resumes from here
            slot, reuse = self._best_slot(free, feed)
            src, shared = self._best_running(feed)
            if src is not None and shared > reuse:
                # a running request's cells hold a longer prefix: share them (seq_cp
                # adds this sequence to those cells in the unified cache; nothing is
                # computed). They are counted for both slots: an overestimate of
                # the cells in use, never an underestimate.
                self.ctx.seq_rm(slot.seq_id, -1, -1)
                self.ctx.seq_cp(src.seq_id, slot.seq_id, 0, shared)
                slot.cached[:] = feed[:shared]
                reuse = shared
                self._count("prefix_copies_total")
            # cells after admission: running jobs' + this prefix; idle caches can go
            running = sum(len(j.slot.cached) for j in self._jobs)
            need = len(feed) - reuse + 1 + len(self._jobs)
            if self.n_ctx - running - reuse < need and self._jobs:
                return  # wait for room (FIFO: the head blocks the rest)
            with self._cv:
                self._queue.popleft()
            if reuse < len(slot.cached):
                self.ctx.seq_rm(slot.seq_id, reuse, -1)
                del slot.cached[reuse:]
            self._evict_idle(min(need, self.n_ctx - reuse), keep=slot)
            self._order += 1
            job = _Job(req, slot, feed, self._order)
            slot.job = job
            slot.last_used = self._tick
            self._jobs.append(job)
            self._count("prompt_tokens_reused", reuse)
            req.admitted(reuse)

    def _best_slot(self, free: list[_Slot], feed: list[int]) -> tuple[_Slot, int]:
        """The free slot sharing the longest prefix with ``feed`` (least recently
        used among equals), and how many of its cached tokens can serve."""
        best, best_n = free[0], -1
        for s in sorted(free, key=lambda s: s.last_used):
            n = _common_prefix(s.cached, feed)
            if n > best_n:
                best, best_n = s, n
        n = min(best_n, len(feed) - 1)  # evaluate at least one token: its logits are needed
        n = media.span_start(feed, n)  # an image is reused whole or not at all
        if n > 0 and self.ctx.seq_pos_min(best.seq_id) > 0:
            n = 0  # a sliding-window cache dropped early positions: re-process from scratch
        if n == 0 and best.cached:
            self.ctx.seq_rm(best.seq_id, -1, -1)
            best.cached.clear()
        return best, n

    def _best_running(self, feed: list[int]) -> tuple[_Slot | None, int]:
        """The running slot whose cells share the longest usable prefix with ``feed``."""
        best: _Slot | None = None
        best_n = 0
        for j in self._jobs:
            n = _common_prefix(j.slot.cached, feed)
            if n > best_n:
                best, best_n = j.slot, n
        n = media.span_start(feed, min(best_n, len(feed) - 1))
        if best is None or n <= 0 or self.ctx.seq_pos_min(best.seq_id) > 0:
            return None, 0
        return best, n

    def _evict_idle(self, need: int, keep: _Slot | None = None) -> None:
        """Drop idle slots' cached prefixes (least recently used first) until
        ``need`` cells are free."""
        for s in sorted((s for s in self._slots if s.job is None and s is not keep and s.cached),
                        key=lambda s: s.last_used):
            if self.n_ctx - self._cells_used() >= need:
                return
            self.ctx.seq_rm(s.seq_id, -1, -1)
            s.cached.clear()

    def _preempt(self, job: _Job) -> None:
        """Free ``job``'s cells and put its request back at the head of the queue."""
        self.ctx.seq_rm(job.slot.seq_id, -1, -1)
        job.slot.cached.clear()
        job.slot.job = None
        self._jobs.remove(job)
        self._count("preemptions_total")
        with self._cv:
            self._queue.appendleft(job.req)

    # -- one step ---------------------------------------------------------------------------
    def _plan(self) -> list[tuple[_Job, int]]:
        """(job, number of its tokens) to decode this step, within n_batch tokens and
        the free KV cells; preempts the youngest jobs when the running ones do not fit."""
        while True:
            decoding = [j for j in self._jobs if len(j.feed) - len(j.slot.cached) == 1]
            need = len(decoding)
            free = self.n_ctx - self._cells_used()
            if free < need:
                self._evict_idle(need)
                free = self.n_ctx - self._cells_used()
            if free < need:
                self._preempt(self._jobs[-1])  # the youngest
                if not self._jobs:
                    return []
                continue
            break
        plan = [(j, 1) for j in decoding]
        budget = min(self.n_batch - need, free - need)
        for j in self._jobs:
            if budget <= 0:
                break
            left = len(j.feed) - len(j.slot.cached)
            if left > 1:
                n = media.cut(j.feed, len(j.slot.cached), min(left, budget))
                plan.append((j, n))
                budget -= n
        if not plan and self._jobs:
            # only prefills, and no free cell for any of them: make room
            self._evict_idle(1)
            if self.n_ctx - self._cells_used() < 1 and len(self._jobs) > 1:
                self._preempt(self._jobs[-1])
        return plan

    def _decode(self, plan: list[tuple[_Job, int]]) -> None:
        if self.projector is not None and any(j.feed[len(j.slot.cached)] < 0 for j, _ in plan):
            plan = self._prefill_media(plan)
            if not plan:
                return
        ctx = self.ctx
        outs: list[_Job] = []
        if len(plan) == 1 and plan[0][1] == 1:  # one token: the single-token fast path
            job = plan[0][0]
            pos = len(job.slot.cached)
            job.row, job.out = 0, 0
            outs.append(job)
            n_tokens = 1
            try:
                ctx.decode_one(job.feed[pos], pos, job.slot.seq_id)
            except BaseException as exc:  # noqa: BLE001
                self._decode_failed(plan, exc)
                return
        else:
            batch = self._batch
            batch.clear()
            # every request's next token in one vectorized add (most of a step)
            singles = [job for job, n in plan if n == 1 and len(job.slot.cached) + 1 == len(job.feed)]
            if singles:
                batch.add_many([j.feed[-1] for j in singles], [len(j.feed) - 1 for j in singles],
                               [j.slot.seq_id for j in singles], logits=True)
                for i, job in enumerate(singles):
                    job.row = job.out = i
                outs.extend(singles)
            done = set(map(id, singles))
            for job, n in plan:
                if id(job) in done:
                    continue
                a = len(job.slot.cached)
                last = a + n == len(job.feed)
                sl = batch.add_many(job.feed[a: a + n], a, job.slot.seq_id,
                                    logits="last" if last else False)
                if last:
                    job.row, job.out = sl.stop - 1, len(outs)
                    outs.append(job)
            n_tokens = batch.n_tokens
            try:
                ctx.decode(batch)
            except BaseException as exc:  # noqa: BLE001
                self._decode_failed(plan, exc)
                return
        st = self.stats
        st["decodes_total"] += 1
        st["decode_tokens_total"] += n_tokens
        if len(plan) >= 2:
            st["batched_decodes_total"] += 1
        for job, n in plan:
            a = len(job.slot.cached)
            job.slot.cached.extend(job.feed[a: a + n])
            job.slot.last_used = self._tick
            st["prompt_tokens_evaluated"] += max(0, min(a + n, len(job.req.prompt_tokens)) - a)
        self._sample(outs)

    def _prefill_media(self, plan: list[tuple[_Job, int]]) -> list[tuple[_Job, int]]:
        """Evaluate the media spans of ``plan`` through the projector (encode, then
        decode the embeddings at their cells); returns the token entries left."""
        rest: list[tuple[_Job, int]] = []
        for job, n in plan:
            a = len(job.slot.cached)
            if job.feed[a] >= 0:
                rest.append((job, n))
                continue
            try:
                self.projector.eval_chunk(self.ctx, job.req.media[a], a, job.slot.seq_id)
            except BaseException as exc:  # noqa: BLE001 - this request's failure only
                self._decode_failed([(job, n)], exc)
                continue
            job.slot.cached.extend(job.feed[a: a + n])
            job.slot.last_used = self._tick
            self._count("decodes_total")
            self._count("decode_tokens_total", n)
            self._count("prompt_tokens_evaluated", n)
        return rest

    def _decode_failed(self, plan: list[tuple[_Job, int]], exc: BaseException) -> None:
        if isinstance(exc, KVCacheFullError) and len(self._jobs) > 1:
            self._preempt(self._jobs[-1])  # the cache is fuller than counted: make room, retry
            return
        if self._closing:
            return
        for job, _ in plan:
            # the sequence's cells are in an unknown state: drop them
            self.ctx.seq_rm(job.slot.seq_id, -1, -1)
            job.slot.cached.clear()
            self._end_job(job, error=exc)

    def _sample(self, outs: list[_Job]) -> None:
        if not outs:
            return
        ctx = self.ctx
        # greedy rows ([logit-bias...] greedy chains) of all requests: one numpy argmax
        greedy = [j for j in outs if j.biases is not None and not j.logprobs]
        picks: dict[int, int] = {}
        if greedy:
            if len(greedy) == 1:
                row = ctx.logits(greedy[0].row)
                if greedy[0].biases:
                    row = row.copy()
                    for ids, values in greedy[0].biases:
                        row[ids] += values
                picks[id(greedy[0])] = int(row.argmax())
            else:
                table = ctx.all_logits()
                rows = [j.out for j in greedy]
                biased = any(j.biases for j in greedy)
                sub = table if len(rows) == table.shape[0] and not biased else table[rows]
                for i, j in enumerate(greedy):
                    for ids, values in j.biases or ():
                        sub[i, ids] += values
                for j, t in zip(greedy, sub.argmax(axis=1).tolist()):
                    picks[id(j)] = t
        n_ctx = self.n_ctx
        for job in outs:
            req = job.req
            logits: np.ndarray | None = None
            try:
                if job.logprobs:
                    logits = ctx.logits(job.row)
                tok = picks.get(id(job))
                if tok is None:
                    tok = policy.sample(req.sampler, ctx, job.row, job.guarded)
            except Exception as exc:  # noqa: BLE001 - this request's failure only
                self._end_job(job, error=exc)
                continue
            self._count("generated_tokens_total")
            if req.add_token(tok, logits):
                self._end_job(job, reason=req.finish_reason)
                continue
            job.feed.append(tok)
            if len(job.feed) > n_ctx:  # its newest token would need a cell beyond the context
                req.finish(FINISH_LENGTH)
                self._end_job(job, reason=FINISH_LENGTH)

    def _end_job(self, job: _Job, *, reason: str | None = None, error: BaseException | None = None
                 ) -> None:
        """Release ``job``'s slot (its cache stays for prefix reuse) and end its
        request: failed with ``error``, or finished with ``reason``."""
        if job in self._jobs:
            self._jobs.remove(job)
        if job.slot.job is job:
            job.slot.job = None
        req = job.req
        if error is not None:
            self._count("requests_failed")
            req.fail(error)
        elif reason == FINISH_CANCELLED:
            self._count("requests_cancelled")
            req.finish(FINISH_CANCELLED)
        else:
            self._count("requests_finished")
            req.finish(reason or FINISH_LENGTH)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64)
    i = int(x.argmax())
    return i if x[i] else n

