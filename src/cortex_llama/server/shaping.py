"""Engine results in OpenAI's shapes: completion and chat bodies, their
logprobs, and their Server-Sent Event streams (ending with ``data: [DONE]``)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Sequence

from ..conversation import ChatCompletion
from ..llm import Completion
from .plumbing import FINISH, Job, SSETemplate, merge, merge_iters, sse
from .schemas import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs,
                      ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionResponse, ToolCall,
                      ToolCallDelta, ToolCallFunction, ToolCallFunctionDelta, TopLogprob)
from .state import ServerState

__all__ = ["completion_logprobs", "chat_logprobs", "completion_choices", "chat_choices", "stream_completion",
           "ChatStream"]


def _finish(reason: str) -> str:
    return FINISH.get(reason, reason)


def completion_logprobs(state: ServerState, c: Completion, offset: int, top: int) -> CompletionLogprobs | None:
    """The completions API's logprobs of ``c`` (text offsets from ``offset``)."""
    if c.logprobs is None:
        return None
    texts, offsets, pos = [], [], offset
    for lp in c.logprobs:
        texts.append(lp.text)
        offsets.append(pos)
        pos += len(lp.text)
    return CompletionLogprobs(
        tokens=texts, token_logprobs=[lp.logprob for lp in c.logprobs],
        top_logprobs=[{state.piece(t): v for t, v in lp.top[:top]} for lp in c.logprobs], text_offset=offsets)


def chat_logprobs(state: ServerState, c: Completion, top: int, start: int = 0) -> ChatLogprobs | None:
    """The chat API's logprobs of ``c``'s tokens from ``start``."""
    if c.logprobs is None:
        return None
    return ChatLogprobs(content=[
        ChatTokenLogprob(token=lp.text, logprob=lp.logprob, bytes=list(lp.text.encode()),
                         top_logprobs=[TopLogprob(token=state.piece(t), logprob=v,
                                                  bytes=list(state.piece(t).encode()))
                                       for t, v in lp.top[:top]])
        for lp in c.logprobs[start:]])


def completion_choices(state: ServerState, job: Job, results: Sequence[Completion]) -> list[CompletionChoice]:
    choices = []
    for i, c in enumerate(results):
        prefix = job.echo[i // job.n] if job.echo else ""
        choices.append(CompletionChoice(index=i, text=prefix + c.text, finish_reason=_finish(c.finish_reason),
                                        logprobs=completion_logprobs(state, c, len(prefix), job.top_logprobs or 0)))
    return choices


def chat_choices(state: ServerState, job: Job, results: Sequence[Completion]) -> list[ChatChoice]:
    choices = []
    for i, c in enumerate(results):
        assert isinstance(c, ChatCompletion)
        calls = [ToolCall(id=t.id, function=ToolCallFunction(name=t.name, arguments=t.arguments))
                 for t in c.tool_calls] or None
        finish = "tool_calls" if calls else _finish(c.finish_reason)
        message = AssistantMessage(content=c.content, reasoning_content=c.reasoning_content, tool_calls=calls)
        choices.append(ChatChoice(index=i, message=message, finish_reason=finish,
                                  logprobs=chat_logprobs(state, c, job.top_logprobs or 0)))
    return choices


async def stream_completion(state: ServerState, job: Job, rid: str, now: int,
                            include_usage: bool) -> AsyncIterator[str]:
    """The completions API's SSE events of ``job``; raises the engine's error of a request."""
    templates: dict[int, SSETemplate] = {}
    model_id = state.model_id

    def chunk(i: int, text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None) -> str:
        if finish is None and logprobs is None:
            t = templates.get(i)
            if t is None:
                t = templates[i] = SSETemplate(CompletionResponse(
                    id=rid, object="text_completion", created=now, model=model_id,
                    choices=[CompletionChoice(index=i, text=SSETemplate.mark(), finish_reason=None,
                                              logprobs=None)]))
            return t.fill(text)
        return sse(CompletionResponse(id=rid, object="text_completion", created=now, model=model_id,
                                      choices=[CompletionChoice(index=i, text=text, finish_reason=finish,
                                                                logprobs=logprobs)]))

    offsets = [len(job.echo[i // job.n]) if job.echo else 0 for i in range(len(job.reqs))]
    if job.echo:
        for i in range(len(job.reqs)):
            yield chunk(i, job.echo[i // job.n])
    async for i, delta in merge(job.reqs):
        if delta is not None:
            yield chunk(i, delta)
            continue
        c = await job.reqs[i].aresult()
        yield chunk(i, "", _finish(c.finish_reason),
                    completion_logprobs(state, c, offsets[i], job.top_logprobs or 0))
    if include_usage:
        yield sse(CompletionResponse(id=rid, object="text_completion", created=now, model=model_id,
                                     choices=[], usage=job.usage()))
    yield "data: [DONE]\n\n"


class ChatStream:
    """The chat API's SSE events of a job whose choices stream chat deltas
    (``streams``: the ``LLM.astream_chat`` iterators, one per choice)."""

    def __init__(self, state: ServerState, job: Job, streams: list[Any], rid: str, now: int) -> None:
        self.state, self.job, self.streams, self.rid, self.now = state, job, streams, rid, now
        self._templates: dict[int, SSETemplate] = {}
        self._sent_lp = [0] * len(job.reqs)
        self._called = [False] * len(job.reqs)

    def _content(self, i: int, text: str) -> str:
        t = self._templates.get(i)
        if t is None:
            t = self._templates[i] = SSETemplate(ChatCompletionChunk(
                id=self.rid, object="chat.completion.chunk", created=self.now, model=self.state.model_id,
                choices=[ChatChunkChoice(index=i, delta=ChatDelta(content=SSETemplate.mark()), finish_reason=None)]))
        return t.fill(text)

    def _chunk(self, i: int, delta: ChatDelta, finish: str | None = None,
               logprobs: ChatLogprobs | None = None) -> str:
        choice = ChatChunkChoice(index=i, delta=delta, finish_reason=finish)
        if logprobs is not None:
            choice.logprobs = logprobs
        return sse(ChatCompletionChunk(id=self.rid, object="chat.completion.chunk", created=self.now,
                                       model=self.state.model_id, choices=[choice]))

    def _new_logprobs(self, i: int) -> ChatLogprobs | None:
        lps = self.job.reqs[i].logprobs
        if lps is None or len(lps) <= self._sent_lp[i]:
            return None
        part = Completion(text="", tokens=[], finish_reason="", logprobs=list(lps[self._sent_lp[i]:]))
        self._sent_lp[i] += len(part.logprobs or [])
        return chat_logprobs(self.state, part, self.job.top_logprobs or 0)

    def _delta(self, i: int, d: Any) -> str:
        if d.tool_calls:
            self._called[i] = True
        lps = self._new_logprobs(i) if self.job.top_logprobs is not None else None
        if d.content and not d.reasoning_content and not d.tool_calls and lps is None:
            return self._content(i, d.content)
        calls = [ToolCallDelta(index=t["index"], id=t.get("id"), type=t.get("type"),
                               function=ToolCallFunctionDelta(**t["function"]) if "function" in t else None)
                 for t in d.tool_calls] or None
        return self._chunk(i, ChatDelta(content=d.content or None, reasoning_content=d.reasoning_content or None,
                                        tool_calls=calls), logprobs=lps)

    async def _final(self, i: int) -> str:
        c = await self.job.reqs[i].aresult()
        finish = "tool_calls" if self._called[i] else _finish(c.finish_reason)
        self._sent_lp[i] = min(self._sent_lp[i], len(c.logprobs or []))
        rest_lp = None
        if c.logprobs is not None and self._sent_lp[i] < len(c.logprobs):
            rest_lp = chat_logprobs(self.state, c, self.job.top_logprobs or 0, self._sent_lp[i])
        return self._chunk(i, ChatDelta(), finish, rest_lp)

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """The events; raises the engine's error of a request."""
        for i in range(len(self.job.reqs)):
            yield self._chunk(i, ChatDelta(role="assistant", content=""))
        async for i, d in merge_iters(self.streams):
            yield self._delta(i, d) if d is not None else await self._final(i)
        if include_usage:
            yield sse(ChatCompletionChunk(id=self.rid, object="chat.completion.chunk", created=self.now,
                                          model=self.state.model_id, choices=[], usage=self.job.usage()))
        yield "data: [DONE]\n\n"
