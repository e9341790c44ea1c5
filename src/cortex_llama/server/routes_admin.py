"""Operators' routes: ``/metrics`` (Prometheus text format, with ``--metrics``)
and ``/lora-adapters`` (the LoRA adapters' default scales)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import Response

from .errors import APIError, from_exception
from .metrics import CONTENT_TYPE, render_llamacpp
from .plumbing import lora_scales
from .schemas import ERROR_RESPONSES
from .state import ServerState, get_state

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", response_class=Response, tags=["server"],
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
async def prometheus(state: ServerState = Depends(get_state)) -> Response:
    """Engine and server counters in Prometheus text format, ours (``cortex_llama_*``)
    and llama-server's (``llamacpp:*``). Raises :class:`APIError` 501 unless the
    server was started with ``--metrics`` (as llama-server). A sleeping server
    (``--sleep-idle-seconds``) answers its counters as they were on falling asleep
    and is not woken."""
    if not state.metrics_endpoint:
        raise APIError(501, "this server does not serve /metrics: start it with --metrics",
                       type="not_supported_error", code="metrics_disabled")
    engine = state.engine_metrics()
    text = state.metrics.render(engine, state.model_id) + render_llamacpp(engine, state.metrics.window(engine))
    response = Response(text, media_type=CONTENT_TYPE)
    # in llama-server's letter case (Starlette lowercases the names it is given)
    response.raw_headers.append((b"Process-Start-Time-Unix", str(state.created).encode()))
    return response


@router.get("/lora-adapters", responses=ERROR_RESPONSES, tags=["server"])
async def lora_adapters(state: ServerState = Depends(get_state)) -> list[dict[str, Any]]:
    """llama-server's list of the LoRA adapters loaded with ``--lora``/``--lora-scaled``
    and their default scales."""
    return [{"id": a.id, "path": a.path, "scale": a.scale, "task_name": "", "prompt_prefix": ""}
            for a in state.llm.lora]


@router.post("/lora-adapters", responses=ERROR_RESPONSES, tags=["server"])
async def set_lora_adapters(body: list[Any] = Body(...), state: ServerState = Depends(get_state)
                            ) -> dict[str, bool]:
    """Set default scales (``[{"id": 0, "scale": 0.5}]``) for the requests that give
    none. Raises :class:`APIError` 400 for a malformed entry or an unknown id."""
    scales = lora_scales(body, "body")
    try:
        state.llm.set_lora_scales(scales)
    except ValueError as exc:
        raise from_exception(exc) from None
    return {"success": True}


@router.api_route("/cors-proxy", methods=["GET", "POST"], responses=ERROR_RESPONSES, tags=["server"],
                  include_in_schema=False)
@router.api_route("/tools", methods=["GET", "POST"], responses=ERROR_RESPONSES, tags=["server"],
                  include_in_schema=False)
async def disabled_feature() -> None:
    """llama-server's routes of its web UI's features this server does not have (the
    MCP CORS proxy of ``--ui-mcp-proxy``, the built-in tools of ``--tools``): 403
    ``feature_disabled``, as llama-server answers them when they are off. Raises
    :class:`APIError` 403."""
    raise APIError(403, "this feature is disabled", type="feature_disabled", code="feature_disabled")
