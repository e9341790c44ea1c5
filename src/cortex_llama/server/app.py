"""The OpenAI-compatible HTTP app: :func:`create_app` builds the shared state,
installs the middleware and error handlers, and registers the routers
(:mod:`.routes_openai`, :mod:`.routes_native`, :mod:`.routes_admin`).

A full queue answers 503 with ``Retry-After``; every bad request answers 4xx
with an OpenAI-style error body naming the field.
"""

from __future__ import annotations

from fastapi import FastAPI

from ..llm import LLM
from . import routes_admin, routes_native, routes_anthropic, routes_openai, routes_responses
from .handlers import install_handlers
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, CountingMiddleware, JSONBodyMiddleware
from .state import ServerState, model_slug

__all__ = ["create_app", "DEFAULT_MAX_BODY"]

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # bytes of a request body
OPEN_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def create_app(llm: LLM, *, api_key: str | None = None, model_alias: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY, title: str = "cortex-llama",
               reasoning_format: str = "auto") -> FastAPI:
    """A FastAPI app serving ``llm`` with OpenAI's API (mount it in your own app or
    run it with uvicorn). The caller keeps ownership of ``llm`` (load and close it).

    ``api_key`` requires ``Authorization: Bearer <api_key>`` on every route but
    ``/health`` and the docs; ``model_alias`` is the model id answers carry
    (default: :func:`.state.model_slug` of the GGUF file name; any ``model`` a
    client sends is accepted); bodies longer than ``max_body_bytes``
    are answered 413; ``reasoning_format`` is llama-server's
    ``--reasoning-format`` (none, auto, deepseek, deepseek-legacy), which a
    request's own ``reasoning_format`` overrides. Never raises.
    """
    from .. import __version__

    app = FastAPI(title=title, version=__version__,
                  description="OpenAI-compatible API of cortex-llama (llama.cpp through cffi) on a "
                              "continuous-batching engine.")
    state = ServerState(llm=llm, model_id=model_alias or model_slug(llm.config.model_path),
                        reasoning_format=reasoning_format)
    app.state.server = state
    app.state.llm = llm
    app.state.metrics = state.metrics
    install_handlers(app)
    routers = [m.router for m in (routes_openai, routes_native, routes_admin, routes_responses, routes_anthropic)]
    for router in routers:
        app.include_router(router)
    # middleware, outermost last
    routes = {getattr(r, "path", "") for r in [*app.routes, *(r for x in routers for r in x.routes)]} - {""}
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=OPEN_PATHS)
    app.add_middleware(CountingMiddleware, metrics=state.metrics, routes=routes)
    return app
