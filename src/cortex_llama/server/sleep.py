"""llama-server's ``--sleep-idle-seconds``: after that many seconds without a
request that needs the model, the server unloads it (the model, its contexts and
the engine thread: memory back to the system) and *sleeps*; the next such
request loads it again before it is served.

While asleep, ``/health``, ``/props`` (``is_sleeping: true``), ``/models`` and
``/metrics`` answer from what was saved on falling asleep and do not wake the
server; every other route wakes it (``/tokenize`` and the token-counting routes
included, as llama-server's). :class:`SleepMiddleware` does the waking and
counts the requests in flight (none may be running when the model unloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Collection

from ..llm import LLM
from .middleware import ASGIApp, Receive, Scope, Send

__all__ = ["Sleeper", "SleepMiddleware", "AWAKE_PATHS", "lifespan"]

#: routes served while asleep, without waking the server (llama-server's)
AWAKE_PATHS = frozenset({"/health", "/v1/health", "/props", "/models", "/v1/models", "/metrics",
                         "/docs", "/openapi.json", "/redoc"})


class Sleeper:
    """The idle timer and the sleeping state of one served :class:`LLM`.

    ``idle_seconds`` < 0: never sleeps. ``on_sleep`` runs (in the event loop)
    right before the model unloads, with the model still loaded: the routes
    that answer while asleep save what they need there.
    """

    def __init__(self, llm: LLM, idle_seconds: float, on_sleep: Callable[[], Awaitable[None]] | None = None
                 ) -> None:
        self.llm = llm
        self.idle_seconds = idle_seconds
        self.on_sleep = on_sleep
        self.sleeping = False
        self.in_flight = 0
        self.last_active = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.idle_seconds >= 0

    def _idle(self) -> bool:
        return (not self.sleeping and self.in_flight == 0
                and time.monotonic() - self.last_active >= self.idle_seconds)

    async def sleep_if_idle(self) -> bool:
        """Fall asleep when idle long enough; True when it did."""
        if not self.enabled or not self._idle():
            return False
        async with self._lock:
            if not self._idle():
                return False
            if self.on_sleep is not None:
                await self.on_sleep()
            self.sleeping = True
            await asyncio.to_thread(self.llm.unload)
            return True

    async def wake(self) -> None:
        """Load the model again when asleep (the caller's request then runs on it);
        waits for a fall into sleep under way. Raises what :meth:`LLM.load` raises."""
        async with self._lock:
            if self.sleeping:
                await asyncio.to_thread(self.llm.load)
                self.sleeping = False
                self.last_active = time.monotonic()

    @contextlib.asynccontextmanager
    async def active(self) -> AsyncIterator[None]:
        """A request that needs the model: wakes the server, and keeps it awake
        until the request (its whole response) is done."""
        self.in_flight += 1
        try:
            await self.wake()
            yield
        finally:
            self.in_flight -= 1
            self.last_active = time.monotonic()

    async def watch(self) -> None:
        """Checks the idle timer until cancelled (a task of the app's lifespan)."""
        if not self.enabled:
            return
        period = min(max(self.idle_seconds / 10, 0.05), 1.0)
        while True:
            await asyncio.sleep(period)
            await self.sleep_if_idle()


class SleepMiddleware:
    """Wakes the server for every request but those to ``awake_paths``, and keeps it
    awake while the request runs."""

    def __init__(self, app: ASGIApp, sleeper: Sleeper, awake_paths: Collection[str] = AWAKE_PATHS) -> None:
        self.app = app
        self.sleeper = sleeper
        self.awake_paths = frozenset(awake_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.awake_paths or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        async with self.sleeper.active():
            await self.app(scope, receive, send)


def lifespan(sleeper: Sleeper | None) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: the idle timer's task runs while the app does."""

    @contextlib.asynccontextmanager
    async def span(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(sleeper.watch()) if sleeper is not None and sleeper.enabled else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return span
