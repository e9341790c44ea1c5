"""Google Cloud Platform (Vertex AI) compatibility, as llama-server's: with
``AIP_MODE=PREDICTION`` in the environment the server listens on
``AIP_HTTP_PORT`` (default 8080), serves ``/health`` again on
``AIP_HEALTH_ROUTE`` when set, and answers ``POST`` on ``AIP_PREDICT_ROUTE``
(default ``/predict``): a body ``{"instances": [...]}`` whose every instance
names a route in ``@requestFormat`` (a camelCase alias of its path, as
``chatCompletions`` for ``/v1/chat/completions``, or the path itself) and is
sent to it as its body, all instances at once, without streaming. The answer is
``{"predictions": [...]}``, one body per instance in order (the route's answer,
an error body included, or an error body of its own for a malformed instance).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import Request as HTTPRequest
from starlette.routing import BaseRoute, Route

from .errors import APIError, error_body

__all__ = ["GcpParams", "install_gcp", "path_to_format", "MAX_INSTANCES"]

MAX_INSTANCES = 128  # llama-server's limit of instances per predict request
#: the outer request's ASGI scope keys an in-process request keeps (not its routing state)
_SCOPE_KEYS = ("type", "asgi", "http_version", "scheme", "server", "client", "root_path")


def _route_env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    return value if not value or value.startswith("/") else "/" + value


@dataclass(frozen=True)
class GcpParams:
    """The ``AIP_*`` variables (Vertex AI's custom-container contract)."""

    enabled: bool = False
    health_route: str = ""  # "": no extra health route
    predict_route: str = "/predict"
    port: int = 8080

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GcpParams:
        """The parameters of ``env``. Raises ``ValueError`` for an ``AIP_HTTP_PORT``
        that is not an integer."""
        port = env.get("AIP_HTTP_PORT") or "8080"
        try:
            n = int(port)
        except ValueError:
            raise ValueError(f"AIP_HTTP_PORT: {port!r} is not a port number") from None
        return cls(enabled=env.get("AIP_MODE", "") == "PREDICTION",
                   health_route=_route_env(env, "AIP_HEALTH_ROUTE", ""),
                   predict_route=_route_env(env, "AIP_PREDICT_ROUTE", "/predict"), port=n)


def path_to_format(path: str) -> str:
    """The camelCase ``@requestFormat`` alias of a route path: ``/v1/chat/completions``
    gives ``chatCompletions``, ``/apply-template`` gives ``applyTemplate``."""
    s = path[3:] if path.startswith("/v1") and len(path) > 3 else path
    s = s[1:] if s.startswith("/") else s
    out: list[str] = []
    cap = False
    for c in s:
        if c in ":{":  # path parameters
            break
        if c in "/-_":
            cap = True
        else:
            out.append(c.upper() if cap else c)
            cap = False
    return "".join(out)


def _routes(routes: Iterable[BaseRoute]) -> dict[str, str]:
    """Path -> the method a predict instance is sent with (POST when the route takes it)."""
    out: dict[str, str] = {}
    for r in routes:
        if isinstance(r, Route) and "{" not in r.path and r.methods:
            out[r.path] = "POST" if "POST" in r.methods else sorted(r.methods)[0]
    return out


def _invalid(message: str) -> dict[str, Any]:
    return error_body(message, "invalid_request_error")


async def _dispatch(raw: HTTPRequest, method: str, path: str, body: dict[str, Any]) -> Any:
    """``body`` sent to ``path`` of this app in-process (middleware included, with the
    outer request's headers): the parsed JSON answer (its text when it is not JSON,
    None when empty)."""
    data = json.dumps(body).encode()
    headers = [(k, v) for k, v in raw.scope["headers"] if k not in (b"content-length", b"content-type")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    scope = {k: raw.scope[k] for k in _SCOPE_KEYS if k in raw.scope}
    scope.update(method=method, path=path, raw_path=path.encode(), query_string=b"", headers=headers)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # no disconnect of an in-process request
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    chunks: list[bytes] = []

    async def send(msg: Mapping[str, Any]) -> None:
        if msg["type"] == "http.response.body":
            chunks.append(bytes(msg.get("body", b"")))

    await raw.app(scope, receive, send)
    text = b"".join(chunks)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text.decode("utf-8", "replace")


async def _predict_one(raw: HTTPRequest, routes: dict[str, str], aliases: dict[str, str], instance: Any) -> Any:
    if not isinstance(instance, dict):
        return _invalid("each instance must be a JSON object")
    fmt = instance.get("@requestFormat")
    if not isinstance(fmt, str):
        return _invalid("each instance must include a string @requestFormat")
    path = aliases.get(fmt) or (fmt if fmt in routes else None)
    if path is None:
        return _invalid(f"no handler registered for @requestFormat: {fmt}")
    payload = {k: v for k, v in instance.items() if k != "@requestFormat"}
    if "stream" in payload:
        payload["stream"] = False  # the predict route does not stream
    try:
        return await _dispatch(raw, routes[path], path, payload)
    except Exception as exc:  # noqa: BLE001 - one instance's failure is its prediction
        return error_body(str(exc) or type(exc).__name__, "server_error")


def install_gcp(app: FastAPI, params: GcpParams, app_routes: Iterable[BaseRoute]) -> None:
    """The predict route (and the extra health route) on ``app``, whose routes are
    ``app_routes`` (those of its routers included). No-op unless ``params.enabled``.
    Raises ``ValueError`` when the predict route is one of the app's routes."""
    if not params.enabled:
        return
    app_routes = list(app_routes)
    routes = _routes(app_routes)
    if params.predict_route in routes:
        raise ValueError(f"AIP_PREDICT_ROUTE={params.predict_route} conflicts with an existing route")
    aliases: dict[str, str] = {}
    for path in routes:
        aliases.setdefault(path_to_format(path), path)
    if params.health_route and params.health_route not in routes:
        health = next(r for r in app_routes if isinstance(r, Route) and r.path == "/health")
        app.add_api_route(params.health_route, health.endpoint, methods=["GET"], include_in_schema=False)

    async def predict(raw: HTTPRequest) -> JSONResponse:
        try:
            data = json.loads(await raw.body())
        except ValueError as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_request")
        instances = data.get("instances")
        if not isinstance(instances, list):
            raise APIError(400, "instances: request body must include an array field named instances",
                           param="instances", code="invalid_value")
        if len(instances) > MAX_INSTANCES:
            raise APIError(400, f"instances: array exceeds maximum size of {MAX_INSTANCES}", param="instances",
                           code="invalid_value")
        out = await asyncio.gather(*(_predict_one(raw, routes, aliases, x) for x in instances))
        return JSONResponse({"predictions": list(out)})

    app.add_api_route(params.predict_route, predict, methods=["POST"], tags=["compat"],
                      summary="Google Cloud Platform (Vertex AI) predict route")
