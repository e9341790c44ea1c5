"""Operators' routes: ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .metrics import CONTENT_TYPE
from .state import ServerState, get_state

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", response_class=Response, tags=["server"],
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
async def prometheus(state: ServerState = Depends(get_state)) -> Response:
    """Engine and server counters in Prometheus text format."""
    return Response(state.metrics.render(state.engine_metrics(), state.model_id), media_type=CONTENT_TYPE)
