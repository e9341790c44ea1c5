"""The generation engine: continuous batching over one context, in one thread.

One background thread owns the :class:`Context`. Each step reads as

1. **plan**: the :class:`~.scheduler.Scheduler` (pure Python) turns the queue,
   the slots and the KV budget into a :class:`~.scheduler.StepPlan`;
2. **execute**: the :class:`~.runner.Runner` applies its KV operations and
   evaluates its spans (media through the projector, tokens in **one**
   ``llama_decode`` that mixes every running request's next token with prompt
   chunks, within ``n_batch`` tokens);
3. **select**: :func:`~.selection.select_tokens` picks each output row's token
   (and verifies drafts, when the engine speculates: :mod:`.speculation`
   drafts before the plan);
4. **update**: each :class:`Request` (the output stage: detokenizing, stop
   strings, logprobs, its stream) takes its token, and the scheduler learns
   which requests go on.

KV layout and admission policy: see :mod:`.scheduler`. By default each slot has
a KV stream of its own (llama.cpp's ``kv_unified=false``): a request's cells
start at position 0 as in a fresh context, so prefix reuse and concurrency give
the same numbers as running alone on a fresh context. With the unified cache,
a request preempted under KV pressure resumes where it stopped (no request is
lost), and one request may use the whole cache.

Failures are per request: a sampler that raises, or a grammar that rejects
every token, fails that request alone; a decode error fails the requests of
that batch (a full cache first preempts the youngest and retries); the engine
keeps serving. :meth:`Engine.close` ends every queued or running request with
:class:`ClosedError`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar, cast

from ..context import Context
from ..errors import ClosedError, KVCacheFullError, QueueFullError
from .lora import LoraSet
from .params import FINISH_CANCELLED, FINISH_LENGTH
from .prompt_cache import PromptCache
from .request import Request
from .runner import Executed, Runner
from .scheduler import SLOT_PROMPT_SIMILARITY, Job, Scheduler, Span, StepPlan
from .selection import Pick, TokenPicker, select_tokens
from .speculation import Speculation
from .streams import WakeBatch, gather_wakes

__all__ = ["Engine"]

_T = TypeVar("_T")

METRIC_COUNTERS = ("requests_total", "requests_finished", "requests_failed", "requests_cancelled",
                   "prompt_tokens_total", "prompt_tokens_reused", "prompt_tokens_evaluated",
                   "generated_tokens_total", "decodes_total", "decode_tokens_total",
                   "batched_decodes_total", "preemptions_total", "prefix_copies_total",
                   "prompt_us_total", "generation_us_total", "tokens_max", "decode_requests_total",
                   "draft_tokens_total", "draft_accepted_total", "drafts_total")


class Engine:
    """The step loop over a scheduler, a runner and token selection (one thread).

    ``Engine(ctx)`` takes ownership of using ``ctx`` (nobody else may decode on
    it while the engine runs); :meth:`start` starts the thread, :meth:`submit`
    queues a :class:`Request`, :meth:`close` stops. The caller checks a
    request's prompt against :attr:`capacity` before submitting. Raises
    ``ValueError`` when ``ctx``'s ``n_batch`` is smaller than its ``n_seq_max``
    (every running request's next token goes into each step's batch).
    """

    def __init__(self, ctx: Context, *, max_queue: int | None = None, projector: Any = None,
                 per_slot: bool | None = None, loras: LoraSet | None = None,
                 prompt_cache_bytes: int | None = 0, speculation: Speculation | None = None,
                 slot_similarity: float = SLOT_PROMPT_SIMILARITY) -> None:
        self.ctx = ctx
        #: the drafting stage (None: no speculative decoding)
        self.speculation = speculation
        self.max_queue = max_queue
        self.per_slot = ctx.per_slot_streams if per_slot is None else per_slot
        #: cells one request may hold (prompt + generated tokens)
        self.capacity = ctx.n_ctx_seq
        self.n_ctx = ctx.n_ctx
        self.n_batch = ctx.n_batch
        #: saved prompt states (``prompt_cache_bytes``: 0 off, None no limit; per-slot streams only)
        self.prompt_cache = (PromptCache(prompt_cache_bytes) if prompt_cache_bytes != 0 and self.per_slot
                             else None)
        self.scheduler = Scheduler(ctx.n_seq_max, self.capacity, ctx.n_batch, per_slot=self.per_slot,
                                   window_dropped=lambda seq: ctx.seq_pos_min(seq) > 0,
                                   prompt_cache=self.prompt_cache, slot_similarity=slot_similarity)
        self.runner = Runner(ctx, projector, per_slot=self.per_slot, loras=loras, prompt_cache=self.prompt_cache)
        self._pickers: dict[int, TokenPicker] = {}  # by id(job)
        # re-entrant: a stream collected (and so cancelled) by a GC pass that runs
        # inside the engine thread while it holds the lock must not deadlock
        self._lock = threading.RLock()  # plain critical sections take it directly
        self._cv = threading.Condition(self._lock)
        self._closing = False
        self._cancels = False  # set by wake(): some request asked to be cancelled
        self._thread: threading.Thread | None = None
        #: (slot, fn, future) run in the loop once the slot is idle (see on_idle_slot),
        #: or with slot None at the next step (see call)
        self._slot_tasks: list[tuple[int | None, Callable[[], Any], Future[Any]]] = []
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
        with self._lock:
            if self._closing:
                raise ClosedError("the engine is closed (LLM unloaded)")
            queue = self.scheduler.queue
            waiting = [r for r in reqs if r.params.max_tokens > 0]
            if self.max_queue is not None and len(queue) + len(waiting) > self.max_queue:
                raise QueueFullError(f"{len(queue)} requests are already waiting "
                                     f"(ModelConfig.max_queue={self.max_queue})")
            for req in reqs:
                self._count("requests_total")
                self._count("prompt_tokens_total", len(req.prompt_tokens))
                if req.params.max_tokens == 0:
                    self._count("requests_finished")
                    req.admitted(0)
                    req.finish(FINISH_LENGTH)
            queue.extend(waiting)
            self._cv.notify()

    def on_idle_slot(self, seq_id: int, fn: Callable[[], _T]) -> Future[_T]:
        """Run ``fn()`` in the engine thread once slot ``seq_id`` runs no request
        (no new request is admitted into it meanwhile), as llama-server defers its
        slot actions; the future holds its result or exception. Raises
        ``ValueError`` for a slot outside ``[0, n_seq_max)`` and
        :class:`ClosedError` after :meth:`close`."""
        return self._add_task(seq_id, fn)

    def call(self, fn: Callable[[], _T]) -> Future[_T]:
        """Run ``fn()`` in the engine thread between two steps (at once when called
        from it); the future holds its result or exception. Every computation on
        this engine's model goes through here (the embedding context's, the
        warm-up): ggml's CPU threads (OpenMP) belong to the thread that computes,
        and a second computing thread leaves two teams of spinning workers on
        the cores, measured 3x slower generation on 2 cores. Raises
        :class:`ClosedError` after :meth:`close`."""
        if threading.current_thread() is self._thread:
            fut: Future[_T] = Future()
            _run_task(fn, fut)
            return fut
        return self._add_task(None, fn)

    def _add_task(self, seq_id: int | None, fn: Callable[[], _T]) -> Future[_T]:
        """Queue ``fn`` for the loop: for slot ``seq_id`` (reserved until it ran), or
        for the next step (None). Raises ``ValueError`` for a slot outside
        ``[0, n_seq_max)``, :class:`ClosedError` after :meth:`close`."""
        fut: Future[_T] = Future()
        with self._lock:
            if self._closing:
                raise ClosedError("the engine is closed (LLM unloaded)")
            if seq_id is not None:
                self.scheduler.slot(seq_id)
                self.scheduler.reserved.add(seq_id)
            self._slot_tasks.append((seq_id, fn, fut))
            self._cv.notify()
        return fut

    def _run_slot_tasks(self) -> None:
        """Run the calls, and the slot tasks whose slot is idle now, in submission order."""
        with self._lock:
            ready = [t for t in self._slot_tasks if t[0] is None or self.scheduler.slot(t[0]).job is None]
            for t in ready:
                self._slot_tasks.remove(t)
        for seq_id, fn, fut in ready:
            _run_task(fn, fut)
            if seq_id is None:
                continue
            with self._lock:
                if not any(t[0] == seq_id for t in self._slot_tasks):
                    self.scheduler.reserved.discard(seq_id)

    def wake(self) -> None:
        """A request was cancelled: make the loop look at its requests now."""
        with self._lock:
            self._cancels = True
            self._cv.notify()

    def close(self) -> None:
        """Stop the loop and end every queued or running request with
        :class:`ClosedError`. Idempotent; waits for the thread."""
        with self._lock:
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
        with self._lock:
            self.stats[name] += n

    def metrics(self) -> dict[str, float]:
        """Counters and gauges (see ``LLM.metrics``)."""
        sched = self.scheduler
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self.stats.items()}
            cache = self.prompt_cache
            if cache is not None:
                out.update(prompt_cache_entries=float(len(cache.entries)), prompt_cache_bytes=float(cache.size_bytes),
                           prompt_cache_hits_total=float(cache.hits), prompt_cache_saves_total=float(cache.saves))
            out.update(requests_running=float(len(sched.jobs)), queue_depth=float(len(sched.queue)),
                       slots_busy=float(sched.slots_busy), slots_total=float(len(sched.slots)),
                       kv_cells_used=float(sched.cells_used), kv_cells_total=float(sched.total_cells),
                       kv_cells_per_request=float(self.capacity))
        return out

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        sched = self.scheduler
        wakes = WakeBatch()  # asyncio consumers are woken once per loop and step
        gather_wakes(wakes)
        try:
            while True:
                with self._lock:
                    while (not self._closing and not sched.has_work() and not self._cancels
                           and not self._slot_tasks):
                        self._cv.wait()
                    if self._closing:
                        break
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the service
                    self._fail_running(exc)
                finally:
                    wakes.flush()
        finally:
            try:
                self._fail_everything()
            finally:
                gather_wakes(None)
                wakes.flush()

    def _step(self) -> None:
        """plan, execute, select, update."""
        sched, spec = self.scheduler, self.speculation
        if self._slot_tasks:
            self._run_slot_tasks()
        if self._cancels:
            self._cancels = False
            self._drop_cancelled()
        if spec is not None and sched.jobs:
            spec.propose(sched.jobs)
        with self._lock:  # the queue is shared with submitters
            plan = sched.plan()
        if plan.admitted or plan.preempted or plan.prefix_copies:
            self._report_plan(plan)
        if not plan.spans:
            if sched.queue and not sched.jobs:
                time.sleep(0.001)  # nothing runs and the head cannot start: should not happen
            return
        executed = self.runner.execute(plan)
        if spec is not None and executed.decode_rows:
            spec.decoded(executed.decode_rows, executed.decode_s)
        evaluated = self._commit(executed)
        outputs = executed.outputs
        if executed.failed:
            for spans, exc in executed.failed:
                self._failed(spans, exc)
            outputs = [o for o in outputs if o[0].job in sched.jobs]  # the failed ones ended
        generated = 0
        if outputs:
            pickers = self._pickers
            picks = select_tokens(self.ctx, [(pickers[id(s.job)], row, out, s.draft) for s, row, out in outputs])
            update = self._update
            for (span, _, _), pick in zip(outputs, picks):
                generated += update(span, pick)
        self._account(executed, evaluated, generated)

    def _report_plan(self, plan: StepPlan) -> None:
        spec = self.speculation
        for job, reused in plan.admitted:
            req = self._request(job)
            self._pickers[id(job)] = TokenPicker(req.sampler, req.params.logprobs is not None)
            self._count("prompt_tokens_reused", reused)
            req.admitted(reused, job.slot.seq_id)
            if spec is not None:
                spec.start(job)
        for job in plan.preempted:
            self._pickers.pop(id(job), None)
            if spec is not None:
                spec.stop(job)
            self._count("preemptions_total")
        if plan.prefix_copies:
            self._count("prefix_copies_total", plan.prefix_copies)

    def _commit(self, executed: Executed) -> int:
        """Mark what was evaluated as cached; returns the prompt tokens among it."""
        done = executed.done
        evaluated = self.scheduler.commit(done)
        if evaluated:  # a prefill step: tell the requests that asked for progress
            for span in done:
                req = self._request(span.job)
                n_prompt = len(req.prompt_tokens)
                if span.start < n_prompt and req.params.return_progress:
                    req.prompt_evaluated(min(span.start + span.n, n_prompt))
        return evaluated

    def _account(self, executed: Executed, evaluated: int, generated: int) -> None:
        """Count a step: its decodes, tokens, prompt tokens evaluated and tokens
        generated (one locked update per step)."""
        n_decodes = executed.n_decodes
        with self._lock:
            st = self.stats
            st["generated_tokens_total"] += generated
            if n_decodes:
                n_jobs = len(executed.done)  # (a step has one span per job)
                st["decodes_total"] += n_decodes
                st["decode_tokens_total"] += executed.n_tokens
                if evaluated:
                    st["prompt_tokens_evaluated"] += evaluated
                st["decode_requests_total"] += n_jobs * n_decodes  # the step's requests, per decode
                if n_jobs >= 2:
                    st["batched_decodes_total"] += 1

    def _update(self, span: Span, pick: Pick) -> int:
        """Give the picked token to its request; end the job or let it go on.
        Returns how many tokens the request took (0 when picking failed)."""
        job = span.job
        if pick.error is not None:
            self._end_job(job, error=pick.error)
            return 0
        if span.draft:
            return self._update_drafted(span, pick)
        req = self._request(job)
        if req.add_token(pick.token, pick.logits):
            self._end_job(job, reason=req.ending)
        elif not self.scheduler.grow(job, pick.token):
            # its newest token would need a cell beyond the request's capacity
            req.finish(FINISH_LENGTH)
            self._end_job(job, reason=FINISH_LENGTH)
        return 1

    def _update_drafted(self, span: Span, pick: Pick) -> int:
        """:meth:`_update` after a draft: the request takes the picked tokens in
        order until it ends; the drafted cells it did not take are dropped."""
        job = span.job
        req = self._request(job)
        draft = span.draft
        taken = accepted = 0
        reason: str | None = None
        for tok, logits in pick.tokens():
            taken += 1
            if req.add_token(tok, logits):
                reason = req.ending
                break
            grown = self.scheduler.grow(job, tok)
            if accepted == taken - 1 and accepted < len(draft) and tok == draft[accepted]:
                accepted += 1  # its cell (the drafted token's) stays
            if not grown:
                req.finish(FINISH_LENGTH)
                reason = FINISH_LENGTH
                break
        self.runner.apply(self.scheduler.verified(span, accepted))
        if self.speculation is not None:
            self.speculation.verified(job, len(draft), accepted)
        with self._lock:
            self.stats["drafts_total"] += 1
            self.stats["draft_tokens_total"] += len(draft)
            self.stats["draft_accepted_total"] += accepted
        if reason is not None:
            self._end_job(job, reason=reason)
        return taken

    @staticmethod
    def _request(job: Job) -> Request:
        return cast(Request, job.req)  # the engine's jobs hold its Requests (submit takes only those)

    # -- failures and endings -----------------------------------------------------------------
    def _failed(self, spans: list[Span], exc: BaseException) -> None:
        """Spans that could not be evaluated: under a full unified cache the youngest
        request is preempted and the step retried; else their requests fail."""
        sched = self.scheduler
        if isinstance(exc, KVCacheFullError) and not self.per_slot and len(sched.jobs) > 1:
            with self._lock:
                plan = StepPlan()
                sched.preempt_youngest(plan)
            self.runner.apply(plan.ops)
            self._report_plan(plan)
            return
        if self._closing:
            return
        for span in spans:
            # the sequence's cells are in an unknown state: drop them
            self._end_job(span.job, error=exc, keep_cache=False)

    def _drop_cancelled(self) -> None:
        with self._lock:
            jobs, waiting = self.scheduler.take_cancelled()
        for job in jobs:
            self._end_job(job, reason=FINISH_CANCELLED)
        for r in waiting:
            self._count("requests_cancelled")
            assert isinstance(r, Request)
            r.finish(FINISH_CANCELLED)

    def _fail_everything(self) -> None:
        with self._lock:
            waiting = list(self.scheduler.queue)
            self.scheduler.queue.clear()
            tasks, self._slot_tasks = self._slot_tasks, []
        for _, _, fut in tasks:
            fut.set_exception(ClosedError("the LLM was closed before this operation ran"))
        for job in list(self.scheduler.jobs):
            self._end_job(job, error=ClosedError("the LLM was closed while this request ran"))
        for req in waiting:
            self._count("requests_failed")
            assert isinstance(req, Request)
            req.fail(ClosedError("the LLM was closed while this request waited"))

    def _fail_running(self, exc: BaseException) -> None:
        """End the running jobs with ``exc`` and drop their cells (their state is
        unknown after an unexpected error)."""
        for job in list(self.scheduler.jobs):
            self._end_job(job, error=exc, keep_cache=False)

    def _end_job(self, job: Job, *, reason: str | None = None, error: BaseException | None = None,
                 keep_cache: bool = True) -> None:
        """Release ``job``'s slot (its cache stays for prefix reuse unless
        ``keep_cache`` is False) and end its request: failed with ``error``, or
        finished with ``reason``."""
        with self._lock:
            ops = self.scheduler.release(job, keep_cache=keep_cache)
        self.runner.apply(ops)
        self._pickers.pop(id(job), None)
        if self.speculation is not None:
            self.speculation.stop(job)
        req = self._request(job)
        if error is not None:
            self._count("requests_failed")
            req.fail(error)
        elif reason == FINISH_CANCELLED:
            self._count("requests_cancelled")
            req.finish(FINISH_CANCELLED)
        else:
            self._count("requests_finished")
            req.finish(reason or FINISH_LENGTH)
        if error is None:
            with self._lock:  # the request's timings are final now
                st = self.stats
                st["prompt_us_total"] += round(req.timings.prompt_ms * 1000)
                st["generation_us_total"] += round(req.timings.generation_ms * 1000)
                st["tokens_max"] = max(st["tokens_max"], len(req.prompt_tokens) + len(req.tokens))


def _run_task(fn: Callable[[], _T], fut: Future[_T]) -> None:
    if fut.set_running_or_notify_cancel():  # False: its caller gave up waiting
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - the caller's failure, in its future
            fut.set_exception(exc)
