"""ASGI middleware of the server: API key, body size limit, request counting.

Each answers its errors with the OpenAI-style JSON body itself, before the
request reaches FastAPI.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, Collection, MutableMapping

from .errors import APIError
from .metrics import ServerMetrics

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "CountingMiddleware", "JSONBodyMiddleware", "send_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(send: Send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ApiKeyMiddleware:
    """Requires ``Authorization: Bearer <key>`` on every path but ``open_paths``."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        auth = dict(scope["headers"]).get(b"authorization")
        if auth is None:
            await send_error(send, APIError(401, "missing API key: send the header "
                                                 "'Authorization: Bearer <key>'", code="missing_api_key",
                                            headers={"WWW-Authenticate": "Bearer"}))
            return
        if not hmac.compare_digest(auth, self.expected):
            await send_error(send, APIError(401, "invalid API key", code="invalid_api_key",
                                            headers={"WWW-Authenticate": "Bearer"}))
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 to a request body longer than ``limit`` bytes, whether it
    announces its length (``Content-Length``) or streams it (chunked).

    The body is read here, up to the limit, and handed on in one message; later
    ``receive`` calls go to the server (so disconnects are still seen).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(413, f"request body larger than the limit of {self.limit} bytes",
                             code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await send_error(send, too_large)
            return
        parts: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left before sending its body
                return
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await send_error(send, too_large)
                return
            parts.append(chunk)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class CountingMiddleware:
    """Counts answered requests per route and status in :class:`ServerMetrics`."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def counting_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.metrics.count_http(route, int(msg["status"]))
            await send(msg)

        await self.app(scope, receive, counting_send)


class JSONBodyMiddleware:
    """Reads every POST body as JSON, whatever its ``Content-Type`` (clients such
    as ``curl -d`` send form encoding by default)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if b"json" not in ctype:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
