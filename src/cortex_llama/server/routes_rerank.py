"""Reranking: llama-server's ``/rerank`` (also ``/reranking``, ``/v1/rerank``,
``/v1/reranking``) in both of its shapes.

Jina's (``query`` and ``documents``): ``{"model", "object": "list", "usage",
"results": [{"index", "relevance_score", "document"?}]}``, best first, at most
``top_n``; ``return_documents`` adds each document. TEI's (``query`` and
``texts``): a list ``[{"index", "score", "text"?}]``, ``return_text`` adds the
text. Served when the server runs a reranking model with ``--reranking``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from .errors import APIError, from_exception, invalid_value
from .schemas import ERROR_RESPONSES, RerankRequest
from .state import ServerState, get_state

__all__ = ["router"]

router = APIRouter()


@router.post("/rerank", responses=ERROR_RESPONSES, tags=["embeddings"])
@router.post("/reranking", include_in_schema=False)
@router.post("/v1/rerank", include_in_schema=False)
@router.post("/v1/reranking", include_in_schema=False)
async def rerank(body: RerankRequest, state: ServerState = Depends(get_state)) -> Any:
    """Scores of ``documents`` (or TEI's ``texts``) against ``query``, best first.
    Raises :class:`APIError`: 501 unless started with ``--reranking``; 400 for a
    missing or empty query, no documents, a non-string document or a pair longer
    than the batch size."""
    if not state.reranking:
        raise APIError(501, "this server does not support reranking: start it with --reranking "
                            "(and a reranking model)", type="not_supported_error", code="not_supported")
    tei = body.texts is not None
    docs = body.texts if tei else body.documents
    if not body.query:
        raise invalid_value("query", "must be a non-empty string")
    if not docs:
        raise invalid_value("texts" if tei else "documents", "must be a non-empty list of strings")
    top_n = body.top_n if body.top_n is not None else len(docs)
    try:
        results = await asyncio.to_thread(state.llm.rerank, body.query, docs, top_n=top_n)
    except ValueError as exc:
        raise invalid_value("texts" if tei else "documents", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - answered as an HTTP error
        raise from_exception(exc) from None
    if tei:
        return [{"index": r.index, "score": r.score, **({"text": docs[r.index]} if body.return_text else {})}
                for r in results]
    used = sum(r.tokens for r in results)
    return {"model": body.model or state.model_id, "object": "list",
            "usage": {"prompt_tokens": used, "total_tokens": used},
            "results": [{"index": r.index, "relevance_score": r.score,
                         **({"document": {"text": docs[r.index]}} if body.return_documents else {})}
                        for r in results]}
