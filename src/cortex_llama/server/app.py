"""The OpenAI-compatible HTTP app: :func:`create_app` builds the shared state,
installs the middleware and error handlers, and registers the routers
(:mod:`.routes_openai`, :mod:`.routes_embeddings`, :mod:`.routes_native`, :mod:`.routes_admin`,
:mod:`.routes_responses`, :mod:`.routes_anthropic`).

A full queue answers 503 with ``Retry-After``; every bad request answers 4xx
with an OpenAI-style error body naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastapi import FastAPI

from ..content import MediaPolicy
from ..llm import LLM
from . import (routes_admin, routes_anthropic, routes_embeddings, routes_native, routes_openai, routes_rerank,
               routes_responses)
from .cors import CorsMiddleware, cors_policy
from .gcp import GcpParams, install_gcp
from .handlers import install_handlers
from .sleep import Sleeper, SleepMiddleware, lifespan
from .middleware import (LOOPBACK_NAMES, ApiKeyMiddleware, BodyLimitMiddleware, CountingMiddleware,
                         HostCheckMiddleware, JSONBodyMiddleware)
from .state import ServerState, model_slug, name_list

__all__ = ["create_app", "DEFAULT_MAX_BODY"]

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # bytes of a request body
OPEN_PATHS = ("/health", "/v1/health")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def create_app(llm: LLM, *, api_key: str | None = None, model_alias: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY, title: str = "cortex-llama",
               reasoning_format: str = "auto", media_path: str | os.PathLike[str] | None = None,
               host: str = "127.0.0.1", allowed_hosts: Sequence[str] = (),
               cors_origins: Sequence[str] = (), settings: Mapping[str, Any] | None = None,
               gcp: GcpParams | None = None) -> FastAPI:
    """A FastAPI app serving ``llm`` with OpenAI's API (mount it in your own app or
    run it with uvicorn). The caller keeps ownership of ``llm`` (load and close it).

    ``api_key`` requires ``Authorization: Bearer <api_key>`` or ``X-Api-Key``
    on every route but ``/health`` (the docs included); ``model_alias`` is the
    model id answers carry (default: :func:`.state.model_slug` of the GGUF file
    name; any ``model`` a client sends is accepted), or several, comma-separated
    as llama-server's ``--alias`` (the id is the first in sorted order); bodies longer than
    ``max_body_bytes`` are answered 413, POST bodies that are not
    ``application/json`` 415; ``reasoning_format`` is llama-server's
    ``--reasoning-format`` (none, auto, deepseek, deepseek-legacy), which a
    request's own ``reasoning_format`` overrides. ``media_path``: the directory
    ``file://`` URLs and paths in chat media parts may read from (None: no local
    file). The ``Host`` header must name loopback, ``host`` (the bound address;
    a wildcard one lets any IP literal through) or one of ``allowed_hosts``
    (``"*"``: no check), else 403. ``cors_origins`` get CORS headers (``"*"``: any);
    without them, any origin does when ``api_key`` is set and none otherwise
    (:func:`.cors.cors_policy`). ``settings`` sets more
    :class:`.state.ServerState` fields (``n_predict``, ``sampling``,
    ``slots_endpoint``, ``metrics_endpoint``, ``enable_thinking``,
    ``slot_save_path``). ``gcp``: Google Cloud Platform's predict route
    (:mod:`.gcp`; :meth:`GcpParams.from_env` reads llama-server's ``AIP_*``
    variables). Raises ``ValueError`` when ``media_path`` is not a directory or the
    predict route is taken, and ``TypeError`` for an unknown settings name.
    """
    from .. import __version__

    if media_path is not None and not Path(media_path).is_dir():
        raise ValueError(f"media_path {os.fspath(media_path)!r} is not a directory")
    aliases = name_list(model_alias)
    state = ServerState(llm=llm, model_id=aliases[0] if aliases else model_slug(llm.config.model_path),
                        aliases=aliases, reasoning_format=reasoning_format,
                        media=MediaPolicy(Path(media_path) if media_path is not None else None),
                        **dict(settings or {}))
    if state.sleep_idle_seconds >= 0:
        state.sleeper = Sleeper(llm, state.sleep_idle_seconds, on_sleep=lambda: _save_for_sleep(state))
    app = FastAPI(title=title, version=__version__, lifespan=lifespan(state.sleeper),
                  description="OpenAI-compatible API of cortex-llama (llama.cpp through cffi) on a "
                              "continuous-batching engine.")
    app.state.server = state
    app.state.llm = llm
    app.state.metrics = state.metrics
    install_handlers(app)
    routers = [m.router for m in (routes_openai, routes_embeddings, routes_rerank, routes_native, routes_admin,
                                     routes_responses, routes_anthropic)]
    for router in routers:
        app.include_router(router)
    install_gcp(app, gcp or GcpParams(), [*app.routes, *(r for x in routers for r in x.routes)])
    routes = {getattr(r, "path", "") for r in [*app.routes, *(r for x in routers for r in x.routes)]} - {""}
    # middleware, outermost last: count, Host, CORS (preflights answered without a key), key, size, type, wake
    if state.sleeper is not None:
        app.add_middleware(SleepMiddleware, sleeper=state.sleeper)
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    if api_key:
        health = (gcp.health_route,) if gcp is not None and gcp.enabled and gcp.health_route else ()
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=OPEN_PATHS + health)
    origins = cors_policy(cors_origins, api_key)
    if origins:
        app.add_middleware(CorsMiddleware, origins=origins)
    if "*" not in allowed_hosts:
        wildcard = host in _WILDCARD_HOSTS
        names = {*LOOPBACK_NAMES, *allowed_hosts, *(() if wildcard else (host,))}
        app.add_middleware(HostCheckMiddleware, allowed=names, any_ip=wildcard)
    app.add_middleware(CountingMiddleware, metrics=state.metrics, routes=routes)
    return app


async def _save_for_sleep(state: ServerState) -> None:
    """What ``/props`` and ``/models`` answer while asleep, and the engine's counters."""
    state.asleep = {"props": await routes_native.props_body(state), "card": routes_openai.card_meta(state)}
    state.carry_metrics()
