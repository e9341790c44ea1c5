"""llama-server's own routes: ``/health``, ``/tokenize``, ``/detokenize``,
``/apply-template`` and ``/completion``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request as HTTPRequest

from .errors import APIError, from_exception
from .plumbing import (Job, cancel_all, chat_inputs, native_n_predict, native_params, native_prompts,
                       results_or_disconnect, stream_response, submit)
from .schemas import (ERROR_RESPONSES, ApplyTemplateResponse, ChatCompletionRequest, DetokenizeRequest, DetokenizeResponse,
                      HealthResponse, NativeCompletionRequest, TokenizeRequest, TokenizeResponse, TokenPiece)
from .shaping import generation_settings, native_final, stream_native
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


@router.post("/completion", responses=ERROR_RESPONSES, tags=["completions"])
async def completion(body: NativeCompletionRequest, raw: HTTPRequest, state: ServerState = Depends(get_state)) -> Any:
    """llama-server's native completion: one body (a list of bodies for a list of
    prompts) with ``content``, ``stop_type``, ``timings``, ``generation_settings``...;
    ``stream`` answers one SSE event per token, then the final body. Raises
    :class:`APIError`: 400 naming the field (``exceed_context_size_error`` for a
    prompt over the context), 503 for a full queue."""
    llm = state.llm
    prompts = await submit_prompts(state, body.prompt)
    params = native_params(state, body)
    settings = generation_settings(state, body, params, native_n_predict(
        state, body.n_predict if body.n_predict is not None else body.max_tokens))

    def make() -> list[Any]:
        reqs: list[Any] = []
        try:
            for toks in prompts:
                reqs.append(llm.submit(toks, params))
        except BaseException:
            cancel_all(reqs)
            raise
        return reqs

    job = Job(await submit(make, "prompt", "grammar" if body.grammar is not None else "json_schema"), 1)
    if body.stream:
        return stream_response(stream_native(state, body, job.reqs, settings), job)
    results = await results_or_disconnect(raw, job)
    if results is None:
        return Response(status_code=499)
    out = [native_final(state, body, settings, toks, c, i) for i, (toks, c) in enumerate(zip(prompts, results))]
    return JSONResponse(out[0] if len(out) == 1 else out)


async def submit_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    """The token lists of a native prompt, tokenized in a worker thread. Raises
    :class:`APIError` (400) like :func:`.plumbing.native_prompts`."""
    try:
        return await asyncio.to_thread(native_prompts, state, prompt)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param="prompt") from None

