"""Operators' routes: ``/metrics`` (Prometheus text format, with ``--metrics``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .errors import APIError
from .metrics import CONTENT_TYPE, render_llamacpp
from .state import ServerState, get_state

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", response_class=Response, tags=["server"],
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
async def prometheus(state: ServerState = Depends(get_state)) -> Response:
    """Engine and server counters in Prometheus text format, ours (``cortex_llama_*``)
    and llama-server's (``llamacpp:*``). Raises :class:`APIError` 501 unless the
    server was started with ``--metrics`` (as llama-server)."""
    if not state.metrics_endpoint:
        raise APIError(501, "this server does not serve /metrics: start it with --metrics",
                       type="not_supported_error", code="metrics_disabled")
    engine = state.engine_metrics()
    text = state.metrics.render(engine, state.model_id) + render_llamacpp(engine)
    return Response(text, media_type=CONTENT_TYPE,
                    headers={"Process-Start-Time-Unix": str(state.created)})
