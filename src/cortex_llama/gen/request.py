"""One generation request: its state, timings and output channel.

Its tokens' text, stop strings and logprobs come from its
:class:`~.output.OutputStage`; its consumers are :mod:`.streams`.

A :class:`Request` is created by ``LLM.submit`` in the caller's thread, fed by
the engine thread (:meth:`Request.add_token`, :meth:`Request.finish`,
:meth:`Request.fail`) and read by any number of consumers: blocking
(:meth:`Request.result`, ``for delta in request``) or asyncio
(:meth:`Request.aresult`, ``async for delta in request``). It holds no
reference to the ``LLM`` or the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

import numpy as np

from ..model import Vocab
from ..sampling import SamplerChain
from .output import OutputStage
from .params import FINISH_CANCELLED, FINISH_STOP, Completion, GenerationParams, Timings, Usage
from .streams import AsyncTextStream, TextStream, Waker, send_wake

__all__ = ["Request", "PromptProgress"]

_ids = itertools.count(1)


@dataclass(frozen=True)
class PromptProgress:
    """How far a prompt's prefill is (llama-server's ``prompt_progress``): its
    ``total`` tokens, those reused from the cache, those in the cache now
    (``processed``, from ``cache`` up to ``total``) and the milliseconds since admission."""

    total: int
    cache: int
    processed: int
    time_ms: float


class Request:
    """A submitted generation request (``LLM.submit`` returns one).

    Consumer side: :attr:`id`, :attr:`prompt_tokens`, :attr:`params`,
    :meth:`cancel`, :attr:`done`, :meth:`result`, :meth:`aresult`, iteration
    (``for`` / ``async for``) over text deltas, and the live :attr:`tokens`,
    :attr:`finish_reason`, :attr:`usage`, :attr:`timings`.

    Engine side (called from the engine thread only): :meth:`admitted`,
    :meth:`prompt_evaluated`, :meth:`add_token`, :meth:`finish`, :meth:`fail`,
    :attr:`cancel_requested`, :attr:`sampler`.
    """

    def __init__(self, prompt_tokens: list[int], params: GenerationParams, sampler: SamplerChain,
                 vocab: Vocab, eog_cache: dict[int, bool] | None = None,
                 on_cancel: Callable[[], None] | None = None, preserved_tokens: Sequence[int] = ()) -> None:
        self.id = next(_ids)
        self.prompt_tokens = prompt_tokens
        #: media chunks of a multimodal prompt by their first cell (see gen.media)
        self.media: dict[int, Any] = {}
        self.params = params
        self.sampler = sampler
        self.output = OutputStage(vocab, params, eog_cache, preserved_tokens)
        self._on_cancel = on_cancel
        #: the generated tokens so far (the output stage's list)
        self.tokens: list[int] = self.output.tokens
        self._parts: list[str] = []  # text deltas delivered so far
        self.logprobs = self.output.logprobs
        self.finish_reason: str | None = None
        #: why it will end, once :meth:`add_token` returned True (published by :meth:`finish`)
        self.ending: str | None = None
        #: the slot (KV sequence) it runs in, once admitted
        self.slot: int | None = None
        #: the LoRA scales it runs with, one per loaded adapter (set by the LLM)
        self.lora_key: tuple[float, ...] = ()
        #: every prefill progress update, in order (a reader never misses one), with
        #: ``GenerationParams.return_progress``; each one wakes the wakers
        self.progress_log: list[PromptProgress] = []
        self.usage = Usage(prompt_tokens=len(prompt_tokens))
        self.timings = Timings()
        self._t_submit = time.perf_counter()
        self._t_admit: float | None = None
        self._t_first: float | None = None
        self._error: BaseException | None = None
        self._cancel = False
        # plain sections take the lock itself (no Condition frames per token);
        # notify_all only runs when a reader blocks in next_delta (_blocked)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._blocked = 0
        self._ended = threading.Event()  # result() waits on this alone: no wake-up per token
        self._wakers: list[Waker] = []  # woken at every delta and at the end
        self._end_wakers: list[Waker] = []  # woken at the end only (aresult)
        self._completion: Completion | None = None
        #: turns the finished Completion into the result (a chat's output parser);
        #: an exception it raises becomes the request's error
        self.finisher: Callable[[Completion], Completion] | None = None

    def __repr__(self) -> str:
        state = self.finish_reason or ("failed" if self._error else "running")
        return f"<Request {self.id} {state} {len(self.tokens)} tokens>"

    # -- consumer side -------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._completion is not None or self._error is not None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel

    @property
    def pinned_slot(self) -> int | None:
        """The slot this request must run in (``GenerationParams.slot``)."""
        return self.params.slot

    @property
    def error(self) -> BaseException | None:
        """The exception this request failed with, if any."""
        return self._error

    def cancel(self) -> None:
        """Stop this request: the engine frees its slot at its next step and it ends
        with ``finish_reason="cancelled"`` (the text so far is kept). Idempotent; a
        no-op once done."""
        if self.done or self._cancel:
            return
        self._cancel = True
        if self._on_cancel is not None:
            self._on_cancel()

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the end and return the :class:`Completion`.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first, and re-raises
        the request's own error (e.g. :class:`ClosedError` after ``LLM.close()``,
        a PySampler's exception, a :class:`GrammarError`).
        """
        if not self._ended.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        return self._outcome()

    async def aresult(self) -> Completion:
        """:meth:`result` for asyncio (no thread); cancelling the awaiting task
        cancels the request."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waker = (loop, event.set)
        self.add_waker(waker, deltas=False)
        try:
            while not self.done:
                event.clear()
                if self.done:
                    break
                await event.wait()
        except BaseException:
            self.cancel()
            raise
        finally:
            self.remove_waker(waker)
        return self._outcome()

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they come (blocking); closing the iterator early cancels."""
        return TextStream(self)

    def __aiter__(self) -> AsyncIterator[str]:
        """Text deltas for ``async for``; leaving the loop early or cancelling the
        task cancels the request."""
        return AsyncTextStream(self)

    def _outcome(self) -> Completion:
        if self._error is not None:
            raise self._error
        assert self._completion is not None
        return self._completion

    def deltas_from(self, index: int) -> list[str]:
        """Every delta from number ``index`` on that has come (without waiting; ``[]``
        when none has). Once there are none left, re-raises the request's error."""
        with self._lock:
            if index < len(self._parts):
                return self._parts[index:]
            if self._error is not None:
                raise self._error
            return []

    def next_delta(self, index: int, block: bool) -> str | None:
        """Delta number ``index``; None when there is none (yet, with ``block=False``;
        at all once done). Re-raises the request's error after its last delta."""
        with self._cond:
            if block:
                while index >= len(self._parts) and not self.done:
                    self._blocked += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._blocked -= 1
            if index < len(self._parts):
                return self._parts[index]
            if self._error is not None:
                raise self._error
            return None

    def add_waker(self, waker: Waker, deltas: bool = True) -> None:
        """Call ``waker``'s function in its event loop (``call_soon_threadsafe``) at
        every new delta and at the end, or (``deltas=False``) at the end only."""
        with self._cond:
            (self._wakers if deltas else self._end_wakers).append(waker)

    def remove_waker(self, waker: Waker) -> None:
        with self._cond:
            for wakers in (self._wakers, self._end_wakers):
                if waker in wakers:
                    wakers.remove(waker)

    def _notify(self, end: bool = False) -> None:
        # under self._lock
        if self._blocked:
            self._cond.notify_all()
        for waker in (self._wakers + self._end_wakers) if end else self._wakers:
            send_wake(waker)

    def _emit(self, delta: str) -> None:
        if delta:
            with self._lock:
                self._parts.append(delta)
                self._notify()

    # -- engine side ------------------------------------------------------------------
    def admitted(self, cached_tokens: int, slot: int | None = None) -> None:
        """The engine gave this request ``slot`` (first time only counts)."""
        if slot is not None:
            self.slot = slot
        if self._t_admit is None:
            self._t_admit = time.perf_counter()
            self.usage.cached_tokens = cached_tokens
            if self.params.return_progress:
                self._progress(cached_tokens)

    def prompt_evaluated(self, processed: int) -> None:
        """The prompt's first ``processed`` tokens are in the KV cache now (the
        engine tells only requests with ``params.return_progress``)."""
        self._progress(processed)

    def _progress(self, processed: int) -> None:
        start = self._t_admit if self._t_admit is not None else time.perf_counter()
        with self._lock:
            self.progress_log.append(PromptProgress(len(self.prompt_tokens), self.usage.cached_tokens, processed,
                                                    (time.perf_counter() - start) * 1000))
            self._notify()

    @property
    def progress(self) -> PromptProgress | None:
        """The latest prefill progress (with ``GenerationParams.return_progress``)."""
        return self.progress_log[-1] if self.progress_log else None

    def add_token(self, tok: int, logits: np.ndarray | None = None) -> bool:
        """Take the sampled token ``tok`` (with the logits it came from, for
        logprobs); emit its text. Returns True when the request is to end (for
        the reason in :attr:`ending`): the engine counts it, then publishes it
        with :meth:`finish`, so that a caller woken by the result finds it counted."""
        if self._t_first is None:
            self._t_first = time.perf_counter()
        out = self.output.take(tok, logits)
        self._emit(out.text)
        if out.finish is None:
            return False
        self.ending = out.finish
        return True

    def finish(self, reason: str) -> None:
        """End normally: flush held-back text (unless cancelled) and publish the
        :class:`Completion`."""
        if self.done:
            return
        if self.ending == FINISH_STOP:
            self._close(FINISH_STOP)  # a stop string ended it: nothing after it is emitted
            return
        if reason != FINISH_CANCELLED:
            out, stopped = self.output.flush()
            if stopped:
                reason = FINISH_STOP
            self._emit(out)
        self._close(reason)

    def _close(self, reason: str) -> None:
        end = time.perf_counter()
        t = self.timings
        admit = self._t_admit if self._t_admit is not None else end
        first = self._t_first if self._t_first is not None else end
        t.queue_ms = (admit - self._t_submit) * 1000
        t.prompt_ms = max(0.0, first - admit) * 1000
        t.first_token_ms = (first - self._t_submit) * 1000
        t.generation_ms = (end - first) * 1000
        self.usage.completion_tokens = len(self.tokens)
        self.finish_reason = reason
        done = Completion(text="".join(self._parts), tokens=list(self.tokens), finish_reason=reason,
                          usage=self.usage, timings=self.timings, logprobs=self.logprobs)
        if self.finisher is not None:
            try:
                done = self.finisher(done)
            except Exception as exc:  # noqa: BLE001 - it is this request's failure, reported to its caller
                self.fail(exc)
                return
        with self._cond:
            self._completion = done
            self._ended.set()
            self._notify(end=True)

    def fail(self, exc: BaseException) -> None:
        """End with an error that :meth:`result` and the iterators re-raise."""
        if self.done:
            return
        self.usage.completion_tokens = len(self.tokens)
        with self._cond:
            self._error = exc
            self._ended.set()
            self._notify(end=True)
