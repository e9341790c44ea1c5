"""llama-server's own routes: ``/health``, ``/tokenize``, ``/detokenize`` and
``/apply-template``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from .errors import APIError, from_exception
from .plumbing import chat_inputs
from .schemas import (ERROR_RESPONSES, ApplyTemplateResponse, ChatCompletionRequest, DetokenizeRequest, DetokenizeResponse,
                      HealthResponse, TokenizeRequest, TokenizeResponse, TokenPiece)
from .state import ServerState, get_state

__all__ = ["router"]

router = APIRouter()


@router.get("/health", response_model=HealthResponse, tags=["server"])
async def health(state: ServerState = Depends(get_state)) -> HealthResponse:
    """200 while the model is loaded and the engine serves (503 otherwise)."""
    llm = state.llm
    if not llm.is_loaded:
        raise APIError(503, "the model is not loaded", code="model_not_loaded")
    m = state.engine_metrics()
    return HealthResponse(model=state.model_id, slots_total=llm.config.n_seq_max,
                          slots_busy=int(m.get("slots_busy", 0)), queue_depth=int(m.get("queue_depth", 0)))


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES, tags=["tokens"])
async def tokenize(body: TokenizeRequest, state: ServerState = Depends(get_state)) -> TokenizeResponse:
    """Tokens of ``content`` (llama-server's extension)."""
    try:
        toks = await asyncio.to_thread(state.llm.tokenize, body.content, body.add_special, body.parse_special)
    except Exception as exc:  # noqa: BLE001
        raise from_exception(exc, prompt_param="content") from None
    if body.with_pieces:
        return TokenizeResponse(tokens=[TokenPiece(id=t, piece=state.piece(t)) for t in toks])
    return TokenizeResponse(tokens=toks)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES, tags=["tokens"])
async def detokenize(body: DetokenizeRequest, state: ServerState = Depends(get_state)) -> DetokenizeResponse:
    """Text of ``tokens`` (llama-server's extension)."""
    try:
        text = await asyncio.to_thread(state.llm.detokenize, body.tokens)
    except Exception as exc:  # noqa: BLE001
        raise from_exception(exc, prompt_param="tokens") from None
    return DetokenizeResponse(content=text)


@router.post("/apply-template", response_model=ApplyTemplateResponse, responses=ERROR_RESPONSES, tags=["chat"])
async def apply_template(body: ChatCompletionRequest, state: ServerState = Depends(get_state)
                         ) -> ApplyTemplateResponse:
    """The prompt a chat request renders to (llama-server's ``/apply-template``)."""
    messages, opts = chat_inputs(state, body)
    try:
        prompt = await asyncio.to_thread(state.llm.chat_prompt, messages, **opts)
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param="messages") from None
    return ApplyTemplateResponse(prompt=prompt)
