"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A request's ``system`` and ``messages`` (text, base64 or URL images,
``tool_use`` and ``tool_result`` blocks) become chat messages that run through
the chat pipeline of ``/v1/chat/completions`` (:mod:`.chat_bridge`): the
template, tool calls and reasoning come from llama.cpp's chat layer. The answer
holds ``thinking``, ``text`` and ``tool_use`` blocks; ``stream`` answers the
API's named Server-Sent Events. Every error on these routes has Anthropic's
shape ``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable, Coroutine

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.requests import Request as HTTPRequest

from ..conversation import ChatCompletion
from .chat_bridge import (Block, BlockCutter, BlockEvent, ChatRun, chat_body, chat_tokens, event_stream,
                          finish_chat, matched_stop, new_id, sse_event, start_chat, tool_input)
from .errors import APIError, anthropic_error, from_exception, invalid_value, require_str
from .handlers import validation_error
from .schemas import ChatCompletionRequest
from .schemas_anthropic import CountTokensRequest, MessagesRequest, OutputFormat
from .state import ServerState, get_state

__all__ = ["router", "AnthropicRoute", "anthropic_error"]

# chat request field -> the Messages field it comes from (for error messages)
NAMES = {"stop": "stop_sequences", "chat_template_kwargs": "thinking", "response_format": "tools"}


class AnthropicRoute(APIRoute):
    """A route whose every error (validation included) is answered in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[HTTPRequest], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(raw: HTTPRequest) -> Response:
            try:
                return await handler(raw)
            except RequestValidationError as exc:
                err = validation_error(exc)
            except Exception as exc:  # noqa: BLE001 - every error is answered in this API's shape
                err = from_exception(exc)
            return JSONResponse(anthropic_error(err), status_code=err.status, headers=err.headers)

        return answer


router = APIRouter(route_class=AnthropicRoute)


# -- request -> chat request ----------------------------------------------------------------------
def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = block.get("source")
    if not isinstance(src, dict) or src.get("type") not in ("base64", "url"):
        raise invalid_value(param + ".source", "must be {'type': 'base64', 'media_type': ..., 'data': ...} or "
                                      "{'type': 'url', 'url': ...}")
    if src["type"] == "url":
        return {"type": "image_url", "image_url": {"url": require_str(src.get("url"), param + ".source.url")}}
    media = require_str(src.get("media_type"), param + ".source.media_type")
    data = require_str(src.get("data"), param + ".source.data")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def _result_text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise invalid_value(param, "must be a string or a list of text blocks")
    texts = []
    for j, b in enumerate(content):
        if not isinstance(b, dict) or b.get("type") != "text":
            raise invalid_value(f"{param}[{j}]", "a tool_result's content holds text blocks only")
        texts.append(require_str(b.get("text"), f"{param}[{j}].text"))
    return "".join(texts)


def _user(blocks: list[Any], param: str) -> list[dict[str, Any]]:
    """The chat messages of a user turn's blocks: tool results first, then the rest."""
    tools, parts = [], []
    for j, b in enumerate(blocks):
        p = f"{param}[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": require_str(b.get("text"), p + ".text")})
        elif kind == "image":
            parts.append(_image(b, p))
        elif kind == "tool_result":
            tools.append({"role": "tool", "tool_call_id": require_str(b.get("tool_use_id"), p + ".tool_use_id"),
                          "content": _result_text(b.get("content"), p + ".content")})
        else:
            raise invalid_value(p + ".type", f"a user block must be 'text', 'image' or 'tool_result', got {kind!r}")
    if not parts:
        return tools
    if all(p["type"] == "text" for p in parts):
        return tools + [{"role": "user", "content": "".join(p["text"] for p in parts)}]
    return tools + [{"role": "user", "content": parts}]


def _assistant(blocks: list[Any], param: str) -> dict[str, Any]:
    """An assistant turn: its text, its tool calls, and its thinking blocks as
    ``reasoning_content`` (llama-server's: the template decides whether to render
    them; redacted ones are dropped)."""
    texts, calls, thoughts = [], [], []
    for j, b in enumerate(blocks):
        p = f"{param}[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            texts.append(require_str(b.get("text"), p + ".text"))
        elif kind == "tool_use":
            args = b.get("input", {})
            if not isinstance(args, dict):
                raise invalid_value(p + ".input", "must be an object")
            calls.append({"id": require_str(b.get("id"), p + ".id"), "type": "function",
                          "function": {"name": require_str(b.get("name"), p + ".name"), "arguments": json.dumps(args)}})
        elif kind == "thinking":
            thoughts.append(require_str(b.get("thinking"), p + ".thinking"))
        elif kind != "redacted_thinking":
            raise invalid_value(p + ".type", f"an assistant block must be 'text', 'thinking' or 'tool_use', got {kind!r}")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    if thoughts:
        msg["reasoning_content"] = "".join(thoughts)
    return msg


def _messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """The chat messages of ``system`` and ``messages``. Raises :class:`APIError`
    (400) naming the bad field."""
    out: list[dict[str, Any]] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else _result_text(body.system, "system")
        out.append({"role": "system", "content": system})
    for i, m in enumerate(body.messages):
        p = f"messages[{i}]"
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise invalid_value(p + ".role", f"must be 'user' or 'assistant', got {role!r}")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            out += _user(content, p + ".content") if role == "user" else [_assistant(content, p + ".content")]
        else:
            raise invalid_value(p + ".content", "must be a string or a list of content blocks")
    return out


def _output_format(body: MessagesRequest) -> tuple[str, OutputFormat] | None:
    """(its field, the format) of a structured-output request, else None."""
    if body.output_config is not None and body.output_config.format is not None:
        return "output_config.format", body.output_config.format
    return ("output_format", body.output_format) if body.output_format is not None else None


def _names(body: CountTokensRequest) -> dict[str, str]:
    """:data:`NAMES`, with ``response_format`` named after the structured-output field when given."""
    fmt = _output_format(body) if isinstance(body, MessagesRequest) else None
    return {**NAMES, "response_format": fmt[0]} if fmt is not None else NAMES


def _chat_request(body: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request of ``body``. Raises :class:`APIError` (400) naming the bad field."""
    fields: dict[str, Any] = {"messages": _messages(body)}
    if isinstance(body, MessagesRequest):
        fields.update(max_tokens=body.max_tokens, stream=body.stream)
        for name in ("temperature", "top_p", "top_k", "min_p", "seed", "grammar"):
            if getattr(body, name) is not None:
                fields[name] = getattr(body, name)
        if body.stop_sequences:
            fields["stop"] = body.stop_sequences
        fmt = _output_format(body)
        if fmt is not None:
            fields["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt[1].schema_}}
    choice = body.tool_choice
    if body.tools and (choice is None or choice.type != "none"):
        fields["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description or "", "parameters": t.input_schema}} for t in body.tools]
        if choice is not None:
            fields["tool_choice"] = ({"type": "function", "function": {"name": choice.name}} if choice.type == "tool"
                                     else "required" if choice.type == "any" else "auto")
            if choice.disable_parallel_tool_use:
                fields["parallel_tool_calls"] = False
    if body.thinking is not None and body.thinking.type != "adaptive":
        fields["chat_template_kwargs"] = {"enable_thinking": body.thinking.type == "enabled"}
    return chat_body(fields, _names(body))


# -- the answer -----------------------------------------------------------------------------------
def _stop(state: ServerState, body: MessagesRequest, done: ChatCompletion) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished answer. Never raises."""
    if done.tool_calls:
        return "tool_use", None
    if done.finish_reason == "length":
        return "max_tokens", None
    hit = matched_stop(state, done, body.stop_sequences or ())
    return ("stop_sequence", hit) if hit is not None else ("end_turn", None)


def _content(done: ChatCompletion) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if done.reasoning_content:
        out.append({"type": "thinking", "thinking": done.reasoning_content, "signature": ""})
    if done.content or not done.tool_calls:
        out.append({"type": "text", "text": done.content or ""})
    for t in done.tool_calls:
        out.append({"type": "tool_use", "id": t.id or new_id("toolu_"), "name": t.name,
                    "input": tool_input(t.arguments)})
    return out


def _message(state: ServerState, mid: str, content: list[dict[str, Any]], stop: tuple[str | None, str | None],
             prompt_tokens: int, cached: int, output_tokens: int) -> dict[str, Any]:
    """A Message; its usage as llama-server's: ``input_tokens`` are the prompt tokens
    evaluated, ``cache_read_input_tokens`` those reused from the KV cache."""
    return {"id": mid, "type": "message", "role": "assistant", "model": state.model_id, "content": content,
            "stop_reason": stop[0], "stop_sequence": stop[1],
            "usage": {"cache_read_input_tokens": cached, "input_tokens": prompt_tokens - cached,
                      "output_tokens": output_tokens}}


def _start_block(b: Block) -> dict[str, Any]:
    if b.kind == "reasoning":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if b.kind == "text":
        return {"type": "text", "text": ""}
    return {"type": "tool_use", "id": b.call_id, "name": b.name, "input": {}}


def _delta(b: Block, text: str) -> dict[str, Any]:
    if b.kind == "reasoning":
        return {"type": "thinking_delta", "thinking": text}
    if b.kind == "text":
        return {"type": "text_delta", "text": text}
    return {"type": "input_json_delta", "partial_json": text}


def _event(name: str, **data: Any) -> str:
    return sse_event(name, {"type": name, **data})


def _render(e: BlockEvent) -> list[str]:
    b = e.block
    if e.what == "start":
        return [_event("content_block_start", index=b.index, content_block=_start_block(b))]
    if e.what == "delta":
        return [_event("content_block_delta", index=b.index, delta=_delta(b, e.delta))]
    out = [_event("content_block_delta", index=b.index, delta={"type": "signature_delta", "signature": ""})] \
        if b.kind == "reasoning" else []
    return out + [_event("content_block_stop", index=b.index)]


async def _events(state: ServerState, body: MessagesRequest, run: ChatRun, mid: str) -> AsyncIterator[str]:
    """The Messages API's events of a streamed run; raises the engine's error."""
    n_in = len(run.request.prompt_tokens)
    yield _event("message_start", message=_message(state, mid, [], (None, None), n_in,
                                                   run.request.usage.cached_tokens, 0))
    cutter = BlockCutter()
    assert run.stream is not None
    async for d in run.stream:
        for e in cutter.feed(d):
            for s in _render(e):
                yield s
    events = cutter.close()
    if not any(b.kind != "reasoning" for b in cutter.blocks):
        events += cutter.empty("text")
    for e in events:
        for s in _render(e):
            yield s
    done = await run.request.aresult()
    assert isinstance(done, ChatCompletion)
    reason, seq = _stop(state, body, done)
    yield _event("message_delta", delta={"stop_reason": reason, "stop_sequence": seq},
                 usage={"input_tokens": n_in, "output_tokens": len(done.tokens)})
    yield _event("message_stop")


def _error_event(err: APIError) -> str:
    return sse_event("error", anthropic_error(err))


# -- routes ---------------------------------------------------------------------------------------
@router.post("/v1/messages", tags=["anthropic"])
async def create_message(body: MessagesRequest, raw: HTTPRequest, state: ServerState = Depends(get_state)) -> Any:
    """A message in answer to ``messages``. Raises :class:`APIError` (answered in
    Anthropic's shape): 400 naming a bad field, 503 when the queue is full."""
    run = await start_chat(state, _chat_request(body), _names(body))
    mid = new_id("msg_")
    if body.stream:
        return event_stream(_events(state, body, run, mid), run, _error_event)
    done = await finish_chat(raw, run)
    if done is None:
        return Response(status_code=499)
    return _message(state, mid, _content(done), _stop(state, body, done), len(run.request.prompt_tokens),
                    done.usage.cached_tokens, len(done.tokens))


@router.post("/v1/messages/count_tokens", tags=["anthropic"])
async def count_tokens(body: CountTokensRequest, state: ServerState = Depends(get_state)) -> dict[str, int]:
    """``{"input_tokens": N}``: the prompt tokens ``/v1/messages`` would read for
    this body. Raises :class:`APIError` (400) naming a bad field."""
    return {"input_tokens": await chat_tokens(state, _chat_request(body), NAMES)}
