"""ASGI middleware of the server: Host check, API key, body size limit, JSON
content type, request counting.

Each answers its errors with the OpenAI-style JSON body itself (Anthropic's on
``/v1/messages``), before the request reaches FastAPI.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any, Awaitable, Callable, Collection, MutableMapping

from .errors import APIError, anthropic_error
from .metrics import ServerMetrics

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "CountingMiddleware", "JSONBodyMiddleware",
           "HostCheckMiddleware", "LOOPBACK_NAMES", "host_name", "send_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


ANTHROPIC_PATHS = ("/v1/messages",)  # their clients read Anthropic's error shape


async def send_error(send: Send, err: APIError, scope: Scope | None = None) -> None:
    """Answer ``err``: OpenAI's error shape, Anthropic's on its routes."""
    path = str(scope.get("path", "")) if scope is not None else ""
    shaped = anthropic_error(err) if path.startswith(ANTHROPIC_PATHS) else err.body()
    body = json.dumps(shaped).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ApiKeyMiddleware:
    """Requires the key on every path but ``open_paths``: ``Authorization: Bearer
    <key>`` or ``X-Api-Key: <key>`` (llama-server's and Anthropic clients' header)."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str]) -> None:
        self.app = app
        self.key = api_key.encode()
        self.open_paths = frozenset(open_paths)

    def _given(self, headers: dict[bytes, bytes]) -> bytes | None:
        auth = headers.get(b"authorization")
        if auth is not None:
            return auth[len(b"Bearer "):] if auth[:len(b"Bearer ")].lower() == b"bearer " else auth
        return headers.get(b"x-api-key")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = self._given(dict(scope["headers"]))
        if given is None:
            await send_error(send, APIError(401, "missing API key: send the header 'Authorization: Bearer "
                                                 "<key>' or 'X-Api-Key: <key>'", code="missing_api_key",
                                            headers={"WWW-Authenticate": "Bearer"}), scope)
            return
        if not hmac.compare_digest(given, self.key):
            await send_error(send, APIError(401, "invalid API key", code="invalid_api_key",
                                            headers={"WWW-Authenticate": "Bearer"}), scope)
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
            await send_error(send, too_large, scope)
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
                await send_error(send, too_large, scope)
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
    """Answers 415 to a POST whose ``Content-Type`` is not JSON (``application/json``
    or ``application/*+json``). A browser page may send ``text/plain`` or form
    bodies to any origin without a CORS preflight; JSON needs one. A POST with
    no body and no ``Content-Type`` (``Content-Length: 0``, as llama-server's
    ``/slots/{id}?action=erase`` is called) passes: it carries nothing to run."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            raw = headers.get(b"content-type", b"").decode("latin-1")
            mime = raw.split(";", 1)[0].strip().lower()
            bodiless = not raw and headers.get(b"content-length") == b"0" and b"transfer-encoding" not in headers
            if not bodiless and mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
                shown = f"Content-Type {raw[:80]!r}" if raw else "no Content-Type"
                await send_error(send, APIError(415, f"{shown}: the request body must be JSON, sent with "
                                                     "'Content-Type: application/json'",
                                                code="unsupported_media_type"), scope)
                return
        await self.app(scope, receive, send)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """The host of a ``Host`` header value, lower case, without port, brackets or
    trailing dot: ``[::1]:8080`` gives ``::1``."""
    h = header.strip().lower()
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostCheckMiddleware:
    """Answers 403 to a request whose ``Host`` is not one of ``allowed`` (names
    compared by :func:`host_name`), which stops DNS rebinding: a page on a
    foreign name that resolves to this server sends that name. ``any_ip`` also
    lets any IP literal through (a wildcard bind is reached by the machine's
    addresses; an IP literal cannot be rebound). A request without ``Host``
    (HTTP/1.0, not a browser) passes."""

    def __init__(self, app: ASGIApp, allowed: Collection[str], any_ip: bool = False) -> None:
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)
        self.any_ip = any_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"host")
            host = host_name(raw.decode("latin-1")) if raw is not None else None
            if host is not None and host not in self.allowed and not (self.any_ip and _is_ip(host)):
                await send_error(send, APIError(403, f"Host {host!r} is not allowed: this server answers "
                                                     f"{', '.join(sorted(self.allowed))} (add names with "
                                                     "--allowed-hosts)", code="host_not_allowed"), scope)
                return
        await self.app(scope, receive, send)
