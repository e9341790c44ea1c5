"""OpenAI's routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
each but ``/v1/completions`` also at llama-server's unprefixed path (``/models``,
``/chat/completions``; not in the schema; llama-server's ``/completions`` is its
native completion, :mod:`.routes_native`). Embeddings: :mod:`.routes_embeddings`."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Union

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request as HTTPRequest

from .chat_bridge import chat_tokens
from .errors import APIError
from .plumbing import (Job, cancel_all, chat_constraint_param, chat_inputs, check_counts, choice_params, constraint,
                       gen_params, light_messages, light_prompts, results_or_disconnect, stream_response, submit,
                       submit_each)
from .schemas import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
                      ERROR_RESPONSES, ModelCard, ModelList)
from .shaping import ChatStream, chat_choices, completion_choices, completion_timings, stream_completion, verbose_body
from .state import ServerState, get_state

if TYPE_CHECKING:
    from ..gen.request import Request

__all__ = ["router", "card_meta"]

router = APIRouter()


def _route(method: str, path: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a handler at ``/v1`` + ``path`` (in the schema) and at ``path`` (not)."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route("/v1" + path, fn, methods=[method], responses=ERROR_RESPONSES, **kw)
        router.add_api_route(path, fn, methods=[method], responses=ERROR_RESPONSES, include_in_schema=False, **kw)
        return fn
    return register


# -- models -----------------------------------------------------------------------------------
def card_meta(state: ServerState) -> dict[str, Any]:
    """The served model's ``meta`` (the model loaded; while the server sleeps, the
    one saved on falling asleep)."""
    if state.sleeping and "card" in state.asleep:
        return dict(state.asleep["card"])
    llm = state.llm
    return {"n_ctx": llm.config.context_size, "n_parallel": llm.config.n_seq_max, "n_vocab": llm.model.n_vocab,
            "n_embd": llm.model.n_embd, "path": str(llm.config.model_path)}


def _card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.model_id, created=state.created, aliases=state.aliases, tags=state.tags,
                     meta=card_meta(state))


@_route("GET", "/models", response_model=ModelList, tags=["models"])
async def list_models(state: ServerState = Depends(get_state)) -> ModelList:
    """The one model this server serves."""
    return ModelList(data=[_card(state)])


@_route("GET", "/models/{model}", response_model=ModelCard, tags=["models"])
async def get_model(model: str, state: ServerState = Depends(get_state)) -> ModelCard:
    """The served model, whatever name is asked for (one model is served)."""
    return _card(state)


# -- completions ----------------------------------------------------------------------------------
def _prompts(body: CompletionRequest) -> list[Union[str, list[int]]]:
    prompts: list[Union[str, list[int]]]
    if isinstance(body.prompt, str):
        prompts = [body.prompt]
    elif body.prompt and isinstance(body.prompt[0], int):
        prompts = [list(body.prompt)]  # type: ignore[arg-type]
    else:
        prompts = list(body.prompt)  # type: ignore[arg-type]
    for i, pr in enumerate(prompts):
        if not pr:
            raise APIError(400, f"prompt[{i}]: must not be empty", param="prompt", code="invalid_value")
    return prompts


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES, tags=["completions"])
async def completions(body: CompletionRequest, raw: HTTPRequest, state: ServerState = Depends(get_state)) -> Any:
    """Text completion; ``stream`` answers Server-Sent Events ending with ``data: [DONE]``
    (only at ``/v1``: the unprefixed ``/completions`` is llama-server's native completion)."""
    llm = state.llm
    prompts = _prompts(body)
    max_tokens = body.max_tokens if body.max_tokens is not None else llm.config.context_size
    check_counts(state, body.n, max_tokens, "max_tokens")
    grammar, schema, gparam = constraint(body)
    params = gen_params(state, body, max_tokens, body.logprobs, grammar, schema)
    reqs = await submit(lambda: submit_each(state, prompts, body.n, params), "prompt", gparam,
                        inline=gparam is None and light_prompts(prompts))
    echo = [p if isinstance(p, str) else llm.detokenize(p) for p in prompts] if body.echo else None
    job = Job(reqs, body.n, top_logprobs=body.logprobs, echo=echo)
    rid, now = "cmpl-" + secrets.token_hex(12), int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(stream_completion(state, job, rid, now, include_usage), job)
    results = await results_or_disconnect(raw, job)
    if results is None:
        return Response(status_code=499)
    return CompletionResponse(id=rid, created=now, model=state.model_id,
                              choices=completion_choices(state, job, results), usage=job.usage(results))


# -- chat completions: the LLM's chat pipeline (llama.cpp's chat layer) ----------------------------
@_route("POST", "/chat/completions", response_model=ChatCompletionResponse, tags=["chat"])
async def chat_completions(body: ChatCompletionRequest, raw: HTTPRequest,
                           state: ServerState = Depends(get_state)) -> Any:
    """Chat completion through the model's chat template (llama.cpp's chat layer):
    tools and tool calls, reasoning_content, JSON output, streaming."""
    llm = state.llm
    max_tokens = body.max_completion_tokens or body.max_tokens
    check_counts(state, body.n, max_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    messages, opts = chat_inputs(state, body)
    top = (body.top_logprobs or 0) if body.logprobs else None
    default = state.n_predict if state.n_predict >= 0 else llm.config.context_size  # -n
    params = gen_params(state, body, max_tokens or default, top, body.grammar, None)
    gparam = chat_constraint_param(body, opts)
    streams: list[Any] = []

    def make() -> list[Request]:
        reqs: list[Request] = []
        try:
            for p in choice_params(params, body.n):
                if body.stream:
                    streams.append(llm.astream_chat(messages, p, **opts))
                    reqs.append(streams[-1].request)
                else:
                    reqs.append(llm.submit_chat(messages, p, **opts))
        except BaseException:
            cancel_all(reqs)
            raise
        return reqs

    inline = gparam is None and light_messages(messages)
    job = Job(await submit(make, "messages", gparam, inline=inline), body.n, top_logprobs=top)
    rid, now = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(ChatStream(state, job, streams, rid, now, body.timings_per_token,
                                          body.return_progress).events(include_usage),
                               job)
    results = await results_or_disconnect(raw, job)
    if results is None:
        return Response(status_code=499)
    answer = ChatCompletionResponse(id=rid, created=now, model=state.model_id, choices=chat_choices(state, job, results),
                                    usage=job.usage(results), timings=completion_timings(results[0]))
    if not (body.verbose or state.verbose):
        return answer
    return JSONResponse({**answer.model_dump(mode="json"), "__verbose": verbose_body(
        state, params, max_tokens or default, job.reqs[0].prompt_tokens, results[0])})


@_route("POST", "/chat/completions/input_tokens", tags=["chat"])
async def chat_input_tokens(body: ChatCompletionRequest, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """llama-server's ``{"object": "response.input_tokens", "input_tokens": N}``: the
    prompt tokens this chat request would read (its ``usage.prompt_tokens``),
    without generating. Raises :class:`APIError` (400) naming a bad field."""
    return {"object": "response.input_tokens", "input_tokens": await chat_tokens(state, body, {})}
