"""Cross-origin requests (CORS) for browser front-ends.

Which origins get CORS headers is decided once, in :func:`cors_policy`: the
``--cors-origins`` list when one is given (``*``: any origin); else any origin
when an API key guards the server (llama-server's default, and safe there: a
page from another site cannot know the key); else none, so that a web page the
user opens cannot drive a server without a key.

An allowed origin is reflected with credentials allowed (llama-server's
answer, its header names in its letter case); a preflight from one is answered here, before the API key is asked
for (browsers send no key on a preflight), and one from any other origin gets
400 without CORS headers, so the browser stops there.
"""

from __future__ import annotations

from typing import Collection, Sequence

from .middleware import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ANY_ORIGIN", "CorsMiddleware", "cors_policy"]

#: the policy that reflects every origin
ANY_ORIGIN = frozenset({"*"})
ALLOW_METHODS = b"GET, POST, DELETE, OPTIONS"  # llama-server's
MAX_AGE = b"600"


def cors_policy(cors_origins: Sequence[str], api_key: str | None) -> frozenset[str]:
    """The origins to answer with CORS headers (:data:`ANY_ORIGIN` for all, empty for none)."""
    if cors_origins:
        listed = frozenset(o.strip().rstrip("/") for o in cors_origins if o.strip())
        return ANY_ORIGIN if "*" in listed else listed
    return ANY_ORIGIN if api_key else frozenset()


class CorsMiddleware:
    """Adds CORS headers for the allowed ``origins`` (see the module) and answers preflights."""

    def __init__(self, app: ASGIApp, origins: Collection[str]) -> None:
        self.app = app
        self.any = "*" in origins
        self.origins = frozenset(o.encode() for o in origins)

    def allowed(self, origin: bytes) -> bool:
        return self.any or origin.rstrip(b"/") in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        method = headers.get(b"access-control-request-method")
        if scope["method"] == "OPTIONS" and method is not None:
            await self._preflight(send, origin, headers.get(b"access-control-request-headers"))
            return
        if not self.allowed(origin):
            await self.app(scope, receive, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_reflect(origin)]
            await send(message)

        await self.app(scope, receive, with_cors)

    async def _preflight(self, send: Send, origin: bytes, requested: bytes | None) -> None:
        if self.allowed(origin):
            # the requested headers are echoed: a "*" does not cover Authorization (Fetch standard)
            status, extra = 200, [*_reflect(origin), (b"Access-Control-Allow-Methods", ALLOW_METHODS),
                                  (b"Access-Control-Allow-Headers", requested or b"*"),
                                  (b"Access-Control-Max-Age", MAX_AGE)]
            body = b"OK"
        else:
            status, extra, body = 400, [(b"Vary", b"Origin")], b"Disallowed CORS origin"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _reflect(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Access-Control-Allow-Origin", origin), (b"Access-Control-Allow-Credentials", b"true"),
            (b"Vary", b"Origin")]
