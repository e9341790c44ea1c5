"""Consumers of a request's text deltas: a blocking iterator and an asyncio one.

Both read :meth:`Request.next_delta`; leaving either early cancels the request.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

if TYPE_CHECKING:
    from .request import Request

__all__ = ["TextStream", "AsyncTextStream", "Waker", "WakeBatch", "gather_wakes", "send_wake"]

#: (event loop, function): called in that loop at a request's new delta or end
Waker = tuple[asyncio.AbstractEventLoop, Callable[[], None]]


class WakeBatch:
    """Wake-ups gathered while one thread updates many requests (the engine's
    update stage), sent by :meth:`flush` as one ``call_soon_threadsafe`` per event
    loop: one write to the loop's self-pipe per step instead of one per request."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}

    def add(self, waker: Waker) -> None:
        loop, fn = waker
        fns = self._by_loop.get(loop)
        if fns is None:
            self._by_loop[loop] = [fn]
        elif fn not in fns:
            fns.append(fn)

    def flush(self) -> None:
        """Send what was gathered. Never raises (a closed loop has nobody waiting)."""
        if not self._by_loop:
            return
        by_loop, self._by_loop = self._by_loop, {}
        for loop, fns in by_loop.items():
            try:
                loop.call_soon_threadsafe(_call_all, fns)
            except RuntimeError:
                pass


def _call_all(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        fn()


class _ThreadBatch(threading.local):
    batch: WakeBatch | None = None


_current = _ThreadBatch()


def gather_wakes(batch: WakeBatch | None) -> None:
    """From now on, this thread's wake-ups go to ``batch`` (None: sent at once)."""
    _current.batch = batch


def send_wake(waker: Waker) -> None:
    """Wake ``waker`` now, or at its thread's next :meth:`WakeBatch.flush` (see
    :func:`gather_wakes`). Never raises."""
    batch = _current.batch
    if batch is not None:
        batch.add(waker)
        return
    try:
        waker[0].call_soon_threadsafe(waker[1])
    except RuntimeError:  # that loop is closed: nobody waits there any more
        pass


class TextStream(Iterator[str]):
    """Blocking iterator over a request's text deltas. :meth:`close` (or garbage
    collection of an abandoned stream) cancels the request if it still runs."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._i = 0
        self._closed = False

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        try:
            delta = self.request.next_delta(self._i, block=True)
        except BaseException:
            self.close()
            raise
        if delta is None:
            self._closed = True
            raise StopIteration
        self._i += 1
        return delta

    def close(self) -> None:
        """Stop reading; cancels the request unless it is done. Idempotent."""
        if not self._closed:
            self._closed = True
            self.request.cancel()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:
            self.request.cancel()


class AsyncTextStream(AsyncIterator[str]):
    """``async for`` over a request's text deltas, woken through
    ``loop.call_soon_threadsafe`` (no thread per request). Leaving the loop early
    (the stream is then collected), :meth:`aclose`, or cancelling the task cancels
    the request."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._i = 0
        self._closed = False
        self._event: asyncio.Event | None = None
        self._waker: Waker | None = None

    def __aiter__(self) -> AsyncTextStream:
        return self

    async def __anext__(self) -> str:
        if self._closed:
            raise StopAsyncIteration
        req = self.request
        if self._event is None:
            self._event = asyncio.Event()
            self._waker = (asyncio.get_running_loop(), self._event.set)
            req.add_waker(self._waker)
        try:
            while True:
                self._event.clear()
                delta = req.next_delta(self._i, block=False)
                if delta is not None:
                    self._i += 1
                    return delta
                if req.done:
                    self._finish()
                    raise StopAsyncIteration
                await self._event.wait()
        except StopAsyncIteration:
            raise
        except BaseException:
            self._finish()
            raise

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            if self._waker is not None:
                self.request.remove_waker(self._waker)
            self.request.cancel()

    async def aclose(self) -> None:
        """Stop reading; cancels the request unless it is done."""
        self._finish()

    def __del__(self) -> None:
        if not self._closed:
            self.request.cancel()
