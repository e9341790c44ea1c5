"""OpenAI's Responses API: ``POST /v1/responses`` (also ``/responses``) and
``GET /v1/responses/{id}``.

A request's ``instructions`` and ``input`` items (after the items of its
``previous_response_id``, kept in a bounded in-memory store) become chat
messages that run through the chat pipeline of ``/v1/chat/completions``
(:mod:`.chat_bridge`): the template, tool calls and reasoning come from
llama.cpp's chat layer. The answer's output items are a ``reasoning`` item when
the model thinks, a ``message`` with ``output_text``, and ``function_call``
items; ``stream`` answers the API's named Server-Sent Events.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from starlette.requests import Request as HTTPRequest

from ..conversation import ChatCompletion
from .chat_bridge import (Block, BlockCutter, BlockEvent, ChatRun, chat_body, chat_tokens, event_stream, finish_chat,
                          new_id, sse_event, start_chat)
from .errors import APIError
from .plumbing import Job
from .responses_items import ResponseStore, StoredResponse, get_store, items_to_messages, output_to_items
from .schemas import ERROR_RESPONSES, ChatCompletionRequest
from .schemas_responses import ResponsesRequest, ResponsesToolChoice
from .shaping import completion_timings, progress_fields, request_timings
from .state import ServerState, get_state

__all__ = ["router"]

router = APIRouter()

# chat request field -> the Responses field it comes from (for error messages)
NAMES = {"max_tokens": "max_output_tokens", "messages": "input", "response_format": "text.format",
         "reasoning_effort": "reasoning.effort", "tool_choice": "tool_choice", "tools": "tools"}


# -- request -> chat request ----------------------------------------------------------------------
def _input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return list(body.input)


def _chat_request(body: ResponsesRequest, items: list[dict[str, Any]], stored: list[dict[str, Any]]
                  ) -> ChatCompletionRequest:
    """The chat request of ``body`` whose conversation is ``stored`` + ``items``.
    Raises :class:`APIError` (400) naming the bad field."""
    messages = items_to_messages(stored, "previous_response_id") + items_to_messages(items)
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    if not messages:
        raise APIError(400, "input: the conversation has no messages", param="input", code="invalid_value")
    fields: dict[str, Any] = {"messages": messages, "stream": body.stream, "max_tokens": body.max_output_tokens}
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "grammar", "parallel_tool_calls",
                 "return_progress"):
        if getattr(body, name) is not None:
            fields[name] = getattr(body, name)
    if body.tools:
        fields["tools"] = [{"type": "function", "function": t.model_dump(exclude_none=True, include={
            "name", "description", "parameters", "strict"})} for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, ResponsesToolChoice):
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        fields["tool_choice"] = choice
    fmt = body.text.format if body.text else None
    if fmt is not None and fmt.type != "text":
        fields["response_format"] = ({"type": "json_object"} if fmt.type == "json_object" else
                                     {"type": "json_schema", "json_schema": {"name": fmt.name or "response",
                                                                             "schema": fmt.schema_}})
    effort = body.reasoning.effort if body.reasoning else None
    if effort is not None:
        fields["reasoning_effort"] = effort
        if effort == "none":
            fields["chat_template_kwargs"] = {"enable_thinking": False}
    return chat_body(fields, NAMES)


# -- output items and the response object ---------------------------------------------------------
def _reasoning(iid: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"id": iid, "type": "reasoning", "summary": [], "content": content, "status": status}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(iid: str, text: str, status: str) -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"id": iid, "type": "message", "role": "assistant", "status": status, "content": content}


def _call(iid: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": iid, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def _item(block: Block, iid: str, status: str) -> dict[str, Any]:
    if block.kind == "reasoning":
        return _reasoning(iid, block.text, status)
    if block.kind == "text":
        return _message(iid, block.text, status)
    return _call(iid, block.call_id, block.name, block.text if status == "completed" else "", status)


def _output(done: ChatCompletion) -> list[dict[str, Any]]:
    """The output items of a parsed answer. Never raises."""
    out = []
    if done.reasoning_content:
        out.append(_reasoning(new_id("rs_"), done.reasoning_content, "completed"))
    if done.content or not done.tool_calls:
        out.append(_message(new_id("msg_"), done.content or "", "completed"))
    for t in done.tool_calls:
        out.append(_call(new_id("fc_"), t.id or new_id("call_"), t.name, t.arguments, "completed"))
    return out


def _usage(job: Job, done: ChatCompletion | None) -> dict[str, Any]:
    u = job.usage([done] if done is not None else None)
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens}


def _envelope(state: ServerState, body: ResponsesRequest, rid: str, now: int, status: str,
              output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """The ``response`` object. Never raises."""
    choice = body.tool_choice
    fmt = body.text.format if body.text and body.text.format else None
    return {
        "id": rid, "object": "response", "created_at": now, "status": status, "model": state.model_id,
        "output": output, "usage": usage, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p,
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "tool_choice": choice.model_dump() if isinstance(choice, ResponsesToolChoice) else (choice or "auto"),
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "text": {"format": fmt.model_dump(exclude_none=True, by_alias=True) if fmt else {"type": "text"}},
        "reasoning": body.reasoning.model_dump() if body.reasoning else None,
        "previous_response_id": body.previous_response_id, "store": body.store,
        "metadata": body.metadata or {}, "user": body.user,
    }


def _status(done: ChatCompletion) -> str:
    return "incomplete" if done.finish_reason == "length" and not done.tool_calls else "completed"


# -- streaming ------------------------------------------------------------------------------------
class ResponsesStream:
    """The Responses API's events of a streamed run (``response.created`` ...
    ``response.completed``); ``on_done`` gets the final response object."""

    def __init__(self, state: ServerState, body: ResponsesRequest, run: ChatRun, rid: str, now: int,
                 on_done: Callable[[dict[str, Any]], None]) -> None:
        self.state, self.body, self.run, self.rid, self.now, self.on_done = state, body, run, rid, now, on_done
        self.seq = 0
        self.ids: dict[int, str] = {}

    def ev(self, event_type: str, **data: Any) -> str:
        """One named event, numbered."""
        event = {"type": event_type, "sequence_number": self.seq, **data}
        self.seq += 1
        return sse_event(event_type, event)

    def error_event(self, err: APIError) -> str:
        """The ``error`` event of a failure mid-stream."""
        return self.ev("error", code=err.code, message=err.message, param=err.param)

    def _start(self, b: Block) -> list[str]:
        iid = self.ids[b.index] = new_id({"reasoning": "rs_", "text": "msg_", "tool": "fc_"}[b.kind])
        out = [self.ev("response.output_item.added", output_index=b.index, item=_item(b, iid, "in_progress"))]
        if b.kind != "tool":
            part = _text_part("") if b.kind == "text" else {"type": "reasoning_text", "text": ""}
            out.append(self.ev("response.content_part.added", item_id=iid, output_index=b.index,
                               content_index=0, part=part))
        return out

    def _delta(self, b: Block, delta: str) -> str:
        at = {"item_id": self.ids[b.index], "output_index": b.index}
        if b.kind == "tool":
            return self.ev("response.function_call_arguments.delta", delta=delta, **at)
        if b.kind == "text":
            if self.body.timings_per_token:
                at["timings"] = request_timings(self.run.request)
            return self.ev("response.output_text.delta", content_index=0, delta=delta, logprobs=[], **at)
        return self.ev("response.reasoning_text.delta", content_index=0, delta=delta, **at)

    def _stop(self, b: Block) -> list[str]:
        iid = self.ids[b.index]
        at = {"item_id": iid, "output_index": b.index}
        if b.kind == "tool":
            out = [self.ev("response.function_call_arguments.done", arguments=b.text, name=b.name, **at)]
        elif b.kind == "text":
            out = [self.ev("response.output_text.done", content_index=0, text=b.text, logprobs=[], **at),
                   self.ev("response.content_part.done", content_index=0, part=_text_part(b.text), **at)]
        else:
            part = {"type": "reasoning_text", "text": b.text}
            out = [self.ev("response.reasoning_text.done", content_index=0, text=b.text, **at),
                   self.ev("response.content_part.done", content_index=0, part=part, **at)]
        return out + [self.ev("response.output_item.done", output_index=b.index, item=_item(b, iid, "completed"))]

    def render(self, e: BlockEvent) -> list[str]:
        if e.what == "start":
            return self._start(e.block)
        if e.what == "delta":
            return [self._delta(e.block, e.delta)]
        return self._stop(e.block)

    async def events(self) -> AsyncIterator[str]:
        """The events; raises the engine's error of the request."""
        start = _envelope(self.state, self.body, self.rid, self.now, "in_progress", [], None)
        yield self.ev("response.created", response=start)
        yield self.ev("response.in_progress", response=start)
        if self.body.return_progress:  # llama-server's: response.in_progress again with each prefill update
            async for extra in progress_fields(self.run.request, self.body.timings_per_token):
                yield self.ev("response.in_progress", response=start, **extra)
        cutter = BlockCutter()
        assert self.run.stream is not None
        async for d in self.run.stream:
            for e in cutter.feed(d):
                for s in self.render(e):
                    yield s
        events = cutter.close()
        if not any(b.kind != "reasoning" for b in cutter.blocks):  # always a message, maybe empty
            events += cutter.empty("text")
        for e in events:
            for s in self.render(e):
                yield s
        done = await self.run.request.aresult()
        assert isinstance(done, ChatCompletion)
        output = [_item(b, self.ids[b.index], "completed") for b in cutter.blocks]
        status = _status(done)
        final = _envelope(self.state, self.body, self.rid, self.now, status, output, _usage(self.run.job, done))
        self.on_done(final)
        # response.completed even when incomplete: the openai client's stream helper waits for it;
        # with llama-server's timings of the request beside the response
        yield self.ev("response.completed", response=final, timings=completion_timings(done))


# -- routes ---------------------------------------------------------------------------------------
async def create_response(body: ResponsesRequest, raw: HTTPRequest, state: ServerState = Depends(get_state),
                          store: ResponseStore = Depends(get_store)) -> Any:
    """A model response to ``input`` (after ``previous_response_id``'s conversation).
    Raises :class:`APIError`: 400 naming a bad field or an unknown
    ``previous_response_id``, 503 when the queue is full."""
    stored = store.get(body.previous_response_id).items if body.previous_response_id else []
    items = _input_items(body)
    run = await start_chat(state, _chat_request(body, items, stored), NAMES)
    rid, now = new_id("resp_"), int(time.time())

    def keep(final: dict[str, Any]) -> None:
        if body.store:
            store.put(rid, StoredResponse(final, stored + items + output_to_items(final["output"])))

    if body.stream:
        stream = ResponsesStream(state, body, run, rid, now, keep)
        return event_stream(stream.events(), run, stream.error_event)
    done = await finish_chat(raw, run)
    if done is None:
        return Response(status_code=499)
    final = _envelope(state, body, rid, now, _status(done), _output(done), _usage(run.job, done))
    keep(final)
    return final


async def response_input_tokens(body: ResponsesRequest, state: ServerState = Depends(get_state),
                                store: ResponseStore = Depends(get_store)) -> dict[str, Any]:
    """llama-server's ``{"object": "response.input_tokens", "input_tokens": N}``: the
    prompt tokens this request would read (after ``previous_response_id``'s
    conversation), without generating. Raises :class:`APIError` (400) naming a bad field."""
    stored = store.get(body.previous_response_id).items if body.previous_response_id else []
    n = await chat_tokens(state, _chat_request(body, _input_items(body), stored), NAMES)
    return {"object": "response.input_tokens", "input_tokens": n}


async def get_response(response_id: str, store: ResponseStore = Depends(get_store)) -> dict[str, Any]:
    """A stored response. Raises :class:`APIError` (404) when it is not stored."""
    return store.get(response_id, "response_id", 404).body


for _prefix, _schema in (("/v1", True), ("", False)):
    router.add_api_route(_prefix + "/responses", create_response, methods=["POST"], responses=ERROR_RESPONSES,
                         tags=["responses"], include_in_schema=_schema)
    router.add_api_route(_prefix + "/responses/input_tokens", response_input_tokens, methods=["POST"],
                         responses=ERROR_RESPONSES, tags=["responses"], include_in_schema=_schema)
    router.add_api_route(_prefix + "/responses/{response_id}", get_response, methods=["GET"],
                         responses=ERROR_RESPONSES, tags=["responses"], include_in_schema=_schema)
