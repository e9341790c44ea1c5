"""The chat pipeline shared by the Responses (:mod:`.routes_responses`) and
Anthropic (:mod:`.routes_anthropic`) routes.

Each of those APIs translates its body into a :class:`ChatCompletionRequest`
and runs it through the same steps as ``/v1/chat/completions``
(:func:`.plumbing.chat_inputs`, :func:`.plumbing.gen_params`, then
:meth:`LLM.submit_chat` or :meth:`LLM.astream_chat`): the chat template, tool
calls and reasoning all come from llama.cpp's chat layer. A streamed answer's
chat deltas are cut into output blocks (reasoning, text, one per tool call) by
:class:`BlockCutter`, which each API renders as its own events.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Literal, Mapping, Sequence

from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.requests import Request as HTTPRequest

from ..chat import ChatDelta
from ..conversation import ChatCompletion
from .errors import APIError, from_exception
from .handlers import validation_error
from .plumbing import (Job, cancel_all, chat_constraint_param, chat_inputs, check_counts, gen_params, light_messages,
                       results_or_disconnect, submit)
from .schemas import ChatCompletionRequest
from .state import ServerState

if TYPE_CHECKING:
    from ..conversation import AsyncChatStream
    from ..gen.request import Request

__all__ = ["ChatRun", "Block", "BlockEvent", "BlockCutter", "chat_body", "start_chat", "finish_chat",
           "chat_tokens", "matched_stop", "tool_input", "event_stream", "sse_event", "new_id", "renamed"]

BlockKind = Literal["reasoning", "text", "tool"]


def new_id(prefix: str) -> str:
    """A fresh random id such as ``resp_0a1b...`` (``prefix`` + 24 hex digits)."""
    return prefix + secrets.token_hex(12)


def renamed(err: APIError, names: Mapping[str, str]) -> APIError:
    """``err`` with its ``param`` (and the message's leading field name) renamed by
    ``names`` (chat field -> this API's field). Never raises."""
    if err.param is None:
        return err
    head, sep, rest = err.param.partition(".")
    base = head.split("[")[0]
    if base not in names:
        return err
    new = names[base] + head[len(base):] + sep + rest
    msg = new + err.message[len(err.param):] if err.message.startswith(err.param) else err.message
    return APIError(err.status, msg, param=new, code=err.code, type=err.type, headers=err.headers)


def chat_body(fields: dict[str, Any], names: Mapping[str, str]) -> ChatCompletionRequest:
    """The chat request of a translated body. Raises :class:`APIError` (400) naming
    the field (renamed by ``names``) when the chat request's checks refuse it."""
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        raise renamed(validation_error(RequestValidationError(exc.errors())), names) from None


@dataclass
class ChatRun:
    """A submitted chat request: its :class:`Job` (one choice) and, when streaming,
    its chat-delta iterator."""

    job: Job
    stream: AsyncChatStream | None = None

    @property
    def request(self) -> Request:
        return self.job.reqs[0]


async def start_chat(state: ServerState, body: ChatCompletionRequest, names: Mapping[str, str]) -> ChatRun:
    """Submit ``body`` as ``/v1/chat/completions`` would (one choice). Raises
    :class:`APIError`: 400 naming the field (renamed by ``names``), 503 when the
    queue is full."""
    llm = state.llm
    try:
        check_counts(state, 1, body.max_tokens, "max_tokens")
        messages, opts = chat_inputs(state, body)
        params = gen_params(state, body, body.max_tokens or llm.config.context_size, None, body.grammar, None)
        gparam = chat_constraint_param(body, opts)
        streams: list[AsyncChatStream] = []

        def make() -> list[Request]:
            if body.stream:
                streams.append(llm.astream_chat(messages, params, **opts))
                return [streams[0].request]
            return [llm.submit_chat(messages, params, **opts)]

        reqs = await submit(make, "messages", gparam, inline=gparam is None and light_messages(messages))
    except APIError as err:
        raise renamed(err, names) from None
    return ChatRun(Job(reqs, 1), streams[0] if streams else None)


async def finish_chat(raw: HTTPRequest, run: ChatRun) -> ChatCompletion | None:
    """The run's parsed answer; None when the client went away first. Raises
    :class:`APIError` when the engine failed the request."""
    results = await results_or_disconnect(raw, run.job)
    if results is None:
        return None
    done = results[0]
    assert isinstance(done, ChatCompletion)
    return done


async def chat_tokens(state: ServerState, body: ChatCompletionRequest, names: Mapping[str, str]) -> int:
    """How many prompt tokens ``body`` renders to. Raises :class:`APIError` (400)
    naming the field."""
    messages, opts = chat_inputs(state, body)
    try:
        toks = await asyncio.to_thread(state.llm.chat_tokens, messages, **opts)
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise renamed(from_exception(exc, prompt_param="messages", grammar_param="tools"), names) from None
    return len(toks)


def matched_stop(state: ServerState, done: ChatCompletion, stops: Sequence[str]) -> str | None:
    """The stop string that ended ``done`` (None when none did). Never raises."""
    if done.finish_reason != "stop" or not stops:
        return None
    try:  # the matcher stops at the first stop string in the output: the earliest one in it
        full = state.llm.detokenize(done.tokens)
    except Exception:  # noqa: BLE001 - only a nicety
        return None
    hits = [(full.find(s), s) for s in stops if s in full]
    return min(hits)[1] if hits else None


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as an object ({} when they are not one). Never raises."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- blocks of a streamed answer -----------------------------------------------------------------
@dataclass
class Block:
    """One output block: thoughts, text, or a tool call (``call_id``, ``name``);
    ``text`` is what it holds so far (a call's JSON arguments)."""

    kind: BlockKind
    index: int
    call_id: str = ""
    name: str = ""
    text: str = ""


@dataclass
class BlockEvent:
    """A block starts, grows by ``delta``, or stops."""

    what: Literal["start", "delta", "stop"]
    block: Block
    delta: str = ""


@dataclass
class BlockCutter:
    """Cuts chat deltas into :class:`Block` events: a block stops when the next
    kind of output (or the next tool call) starts."""

    blocks: list[Block] = field(default_factory=list)
    _open: Block | None = None
    _calls: dict[int, Block] = field(default_factory=dict)

    def _start(self, block: Block) -> list[BlockEvent]:
        out = self.close()
        self.blocks.append(block)
        self._open = block
        return out + [BlockEvent("start", block)]

    def _grow(self, kind: BlockKind, text: str) -> list[BlockEvent]:
        out = [] if self._open is not None and self._open.kind == kind else \
            self._start(Block(kind, len(self.blocks)))
        assert self._open is not None
        self._open.text += text
        return out + [BlockEvent("delta", self._open, text)]

    def _call(self, tc: Mapping[str, Any]) -> list[BlockEvent]:
        fn = tc.get("function") or {}
        out: list[BlockEvent] = []
        block = self._calls.get(int(tc.get("index", 0)))
        if block is None:
            block = Block("tool", len(self.blocks), call_id=tc.get("id") or new_id("call_"),
                          name=fn.get("name") or "")
            self._calls[int(tc.get("index", 0))] = block
            out = self._start(block)
        if fn.get("arguments"):
            block.text += fn["arguments"]
            out.append(BlockEvent("delta", block, fn["arguments"]))
        return out

    def feed(self, d: ChatDelta) -> list[BlockEvent]:
        """The events of one chat delta. Never raises."""
        out: list[BlockEvent] = []
        if d.reasoning_content:
            out += self._grow("reasoning", d.reasoning_content)
        if d.content:
            out += self._grow("text", d.content)
        for tc in d.tool_calls:
            out += self._call(tc)
        return out

    def empty(self, kind: BlockKind) -> list[BlockEvent]:
        """Stop the open block, then start and stop an empty block of ``kind``. Never raises."""
        return self._start(Block(kind, len(self.blocks))) + self.close()

    def close(self) -> list[BlockEvent]:
        """The stop event of the open block, if any. Never raises."""
        if self._open is None:
            return []
        block, self._open = self._open, None
        return [BlockEvent("stop", block)]


def event_stream(gen: AsyncIterator[str], run: ChatRun, on_error: Callable[[APIError], str]) -> StreamingResponse:
    """An SSE response of ``gen``'s events; an error mid-stream is sent as the event
    ``on_error`` renders, and the request is cancelled when the stream ends or the
    client leaves. Never raises."""
    async def body() -> AsyncIterator[str]:
        try:
            async for event in gen:
                yield event
        except Exception as exc:  # noqa: BLE001 - reported in the stream, the server goes on
            yield on_error(from_exception(exc))
        finally:
            cancel_all(run.job.reqs)
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse_event(name: str, data: Mapping[str, Any]) -> str:
    """One Server-Sent Event with an ``event:`` line (the Responses and Anthropic streams)."""
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
