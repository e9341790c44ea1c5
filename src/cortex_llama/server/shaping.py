"""Engine results in OpenAI's shapes: completion and chat bodies, their
logprobs, and their Server-Sent Event streams (ending with ``data: [DONE]``)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from ..conversation import ChatCompletion
from ..llm import Completion, GenerationParams, Timings, TokenLogprob
from .plumbing import FINISH, Job, SSETemplate, merge, merge_iters, progress_json, progress_updates, sse, token_chunks
from .schemas import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs,
                      ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionResponse, ToolCall,
                      NativeCompletionRequest, ToolCallDelta, ToolCallFunction, ToolCallFunctionDelta, TopLogprob)
from .state import ServerState

if TYPE_CHECKING:
    from ..gen.request import PromptProgress, Request

__all__ = ["completion_logprobs", "chat_logprobs", "completion_choices", "chat_choices", "stream_completion",
           "ChatStream", "generation_settings", "native_timings", "native_probs", "pick_fields", "native_final",
           "stream_native", "DEFAULT_SEED", "completion_timings", "verbose_body", "progress_fields",
           "request_timings"]


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

    def __init__(self, state: ServerState, job: Job, streams: list[Any], rid: str, now: int,
                 timings_per_token: bool = False, return_progress: bool = False) -> None:
        self.state, self.job, self.streams, self.rid, self.now = state, job, streams, rid, now
        self.timings_per_token = timings_per_token
        self.return_progress = return_progress
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
        if self.timings_per_token:
            return _with_timings(self._plain_delta(i, d), request_timings(self.job.reqs[i]))
        return self._plain_delta(i, d)

    def _plain_delta(self, i: int, d: Any) -> str:
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

    async def _final(self, i: int, last: bool) -> str:
        """The finish event of choice ``i``; ``last``: the stream's last event, with
        the request's timings (llama-server's)."""
        c = await self.job.reqs[i].aresult()
        finish = "tool_calls" if self._called[i] else _finish(c.finish_reason)
        self._sent_lp[i] = min(self._sent_lp[i], len(c.logprobs or []))
        rest_lp = None
        if c.logprobs is not None and self._sent_lp[i] < len(c.logprobs):
            rest_lp = chat_logprobs(self.state, c, self.job.top_logprobs or 0, self._sent_lp[i])
        event = self._chunk(i, ChatDelta(), finish, rest_lp)
        return _with_timings(event, completion_timings(c)) if last or self.timings_per_token else event

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """The events (the first of each choice with the role, its content null, as
        llama-server's); raises the engine's error of a request."""
        for i, req in enumerate(self.job.reqs):
            if self.return_progress:  # llama-server's: the first delta again with each prefill update
                async for extra in progress_fields(req, self.timings_per_token):
                    yield _with_fields(self._chunk(i, ChatDelta(role="assistant", content=None)), extra)
            else:
                yield self._chunk(i, ChatDelta(role="assistant", content=None))  # llama-server's first delta
        left = len(self.job.reqs)
        last: Completion | None = None
        async for i, d in merge_iters(self.streams):
            if d is not None:
                yield self._delta(i, d)
                continue
            left -= 1
            last = await self.job.reqs[i].aresult()
            yield await self._final(i, last=left == 0 and not include_usage)
        if include_usage:
            yield sse(ChatCompletionChunk(id=self.rid, object="chat.completion.chunk", created=self.now,
                                          model=self.state.model_id, choices=[], usage=self.job.usage(),
                                          timings=completion_timings(last) if last is not None else None))
        yield "data: [DONE]\n\n"


def _with_timings(event: str, timings: dict[str, Any]) -> str:
    """An SSE event of one JSON object with llama-server's ``timings`` added."""
    return _with_fields(event, {"timings": timings})


def _with_fields(event: str, fields: dict[str, Any]) -> str:
    """An SSE event of one JSON object with ``fields`` added at its end."""
    head = event.rstrip()
    assert head.endswith("}"), event
    return f"{head[:-1]},{json.dumps(fields)[1:-1]}}}\n\n"


# -- llama-server's native /completion ---------------------------------------------------------
_STOP_TYPES = {"end-of-generation": "eos", "stop": "word", "length": "limit"}
#: the sampler settings llama-server reports that this engine does not have, at their "off" values
_SAMPLERS_OFF: dict[str, Any] = {
    "dynatemp_range": 0.0, "dynatemp_exponent": 1.0, "top_n_sigma": -1.0, "xtc_probability": 0.0,
    "xtc_threshold": 0.1, "typical_p": 1.0, "dry_multiplier": 0.0, "dry_base": 1.75, "dry_allowed_length": 2,
    "dry_penalty_last_n": -1, "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
    "adaptive_target": -1.0, "adaptive_decay": 0.9, "n_keep": 0, "n_discard": 0, "min_keep": 0,
}
DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed


def generation_settings(state: ServerState, body: NativeCompletionRequest, p: GenerationParams,
                        n_predict: int) -> dict[str, Any]:
    """llama-server's ``generation_settings`` of a request. Never raises."""
    seed = p.seed if p.seed is not None else state.llm.config.seed
    bias = [{"bias": None if math.isinf(b) else b, "token": t} for t, b in (p.logit_bias or {}).items()]
    return {
        "seed": DEFAULT_SEED if seed is None else seed, "temperature": p.temperature, "top_k": p.top_k,
        "top_p": p.top_p, "min_p": p.min_p, "repeat_last_n": p.penalty_last_n, "repeat_penalty": p.repeat_penalty,
        "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty, **_SAMPLERS_OFF,
        "max_tokens": n_predict, "n_predict": n_predict, "ignore_eos": body.ignore_eos, "stream": body.stream,
        "n_probs": body.n_probs, "stop": list(p.stop), "logit_bias": bias, "grammar": p.grammar or "",
        "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"],
        "timings_per_token": body.timings_per_token, "post_sampling_probs": body.post_sampling_probs,
        "model": state.model_id,
    }


def native_timings(prompt_tokens: int, cached: int, n_gen: int, t: Timings) -> dict[str, Any]:
    """llama-server's ``timings`` object (the first token comes with the prompt, so
    the generation rate is over the tokens after it). Never raises."""
    n_prompt = max(prompt_tokens - cached, 0)
    return {
        "cache_n": cached, "prompt_n": n_prompt, "prompt_ms": t.prompt_ms,
        "prompt_per_token_ms": t.prompt_ms / n_prompt if n_prompt else 0.0,
        "prompt_per_second": 1e3 * n_prompt / t.prompt_ms if t.prompt_ms > 0 else 0.0,
        "predicted_n": n_gen, "predicted_ms": t.generation_ms,  
        "predicted_per_token_ms": t.generation_ms / (n_gen - 1) if n_gen > 1 else 0.0,
        "predicted_per_second": 1e3 * (n_gen - 1) / t.generation_ms if n_gen > 1 and t.generation_ms > 0 else 0.0,
        # speculative decoding's counts, when it drafted (as llama-server's)
        **({"draft_n": t.draft_n, "draft_n_accepted": t.draft_n_accepted} if t.draft_n > 0 else {}),
    }


def completion_timings(c: Completion) -> dict[str, Any]:
    """llama-server's ``timings`` of a finished request. Never raises."""
    return native_timings(c.usage.prompt_tokens, c.usage.cached_tokens, len(c.tokens), c.timings)


def progress_timings(p: PromptProgress) -> dict[str, Any]:
    """llama-server's ``timings`` of a prefill progress update (nothing generated yet)."""
    return native_timings(p.processed, p.cache, 0, Timings(prompt_ms=p.time_ms if p.processed > p.cache else 0.0))


async def progress_fields(req: Request, with_timings: bool) -> AsyncIterator[dict[str, Any]]:
    """llama-server's fields of each prefill progress update of ``req``:
    ``prompt_progress``, and its ``timings`` with ``with_timings`` (``timings_per_token``)."""
    async for p in progress_updates(req):
        fields: dict[str, Any] = {"prompt_progress": progress_json(p)}
        if with_timings:
            fields["timings"] = progress_timings(p)
        yield fields


def request_timings(req: Request) -> dict[str, Any]:
    """llama-server's ``timings`` of a request so far (``timings_per_token``). Never raises."""
    return native_timings(len(req.prompt_tokens), req.usage.cached_tokens, req.usage.completion_tokens, req.timings)


def verbose_body(state: ServerState, params: GenerationParams, n_predict: int, prompt: list[int],
                 c: Completion) -> dict[str, Any]:
    """llama-server's ``__verbose`` of an OpenAI-shaped answer: the native
    ``/completion`` body of the same generation. Never raises."""
    body = NativeCompletionRequest.model_validate({"prompt": ""})
    return native_final(state, body, generation_settings(state, body, params, n_predict), prompt, c, 0)


def native_probs(state: ServerState, lps: Sequence[TokenLogprob], top: int, post: bool) -> list[dict[str, Any]]:
    """llama-server's ``completion_probabilities``: logprobs, or probabilities
    with ``post`` (``post_sampling_probs``; of the model's distribution)."""
    key, top_key = ("prob", "top_probs") if post else ("logprob", "top_logprobs")

    def val(lp: float) -> float:
        return math.exp(lp) if post else max(lp, -3.4028234663852886e38)

    def entry(tok: int, text: str, lp: float) -> dict[str, Any]:
        return {"id": tok, "token": text, "bytes": list(text.encode()), key: val(lp)}

    return [{**entry(lp.token, lp.text, lp.logprob),
             top_key: [entry(t, state.piece(t), v) for t, v in lp.top[:top]]} for lp in lps]


def _stopping_word(state: ServerState, c: Completion, stops: Sequence[str]) -> str:
    if c.finish_reason != "stop":
        return ""
    rest = state.llm.detokenize(c.tokens)[len(c.text):]
    return next((s for s in stops if rest.startswith(s) or s in rest), "")


def pick_fields(res: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """llama-server's ``response_fields``: each ``a/b`` path found in ``res``,
    keyed by the path itself. Never raises."""
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = res
        for part in path.split("/"):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            out[path] = node
    return out


def native_final(state: ServerState, body: NativeCompletionRequest, settings: dict[str, Any], prompt: list[int],
                 c: Completion, index: int) -> dict[str, Any]:
    """llama-server's final body of one prompt (``content`` and ``tokens`` empty
    when streaming, as they were sent in the chunks). Never raises."""
    res: dict[str, Any] = {
        "index": index, "content": "" if body.stream else c.text,
        "tokens": list(c.tokens) if body.return_tokens and not body.stream else [], "id_slot": -1,
        "stop": True, "model": state.model_id, "tokens_predicted": len(c.tokens),
        "tokens_evaluated": len(prompt), "generation_settings": settings,
        "prompt": state.llm.detokenize(prompt), "has_new_line": "\n" in c.text, "truncated": False,
        "stop_type": _STOP_TYPES.get(c.finish_reason, "none"),
        "stopping_word": _stopping_word(state, c, settings["stop"]), "tokens_cached": len(prompt) + len(c.tokens),
        "timings": native_timings(len(prompt), c.usage.cached_tokens, len(c.tokens), c.timings),
    }
    if c.logprobs and not body.stream:
        res["completion_probabilities"] = native_probs(state, c.logprobs, body.n_probs, body.post_sampling_probs)
    return pick_fields(res, body.response_fields) if body.response_fields else res


def _native_chunk(state: ServerState, body: NativeCompletionRequest, req: Request, index: int,
                  toks: list[int], text: str, lp_from: int) -> dict[str, Any]:
    chunk: dict[str, Any] = {"index": index, "content": text, "tokens": toks, "stop": False, "id_slot": -1,
                             "tokens_predicted": lp_from + len(toks), "tokens_evaluated": len(req.prompt_tokens)}
    if body.timings_per_token:
        chunk["timings"] = native_timings(len(req.prompt_tokens), req.usage.cached_tokens, lp_from + len(toks),
                                          req.timings)
    lps = req.logprobs
    if body.n_probs and lps is not None:
        chunk["completion_probabilities"] = native_probs(state, lps[lp_from:lp_from + len(toks)], body.n_probs,
                                                         body.post_sampling_probs)
    return chunk


async def stream_native(state: ServerState, body: NativeCompletionRequest, reqs: Sequence[Request],
                        settings: dict[str, Any]) -> AsyncIterator[str]:
    """llama-server's ``/completion`` SSE events: one per token (``stop``: false;
    text released at the end, held for a stop string or a partial UTF-8
    character, joins the last token's event), then the final body per prompt;
    no ``[DONE]``. Raises the engine's error."""
    sent = [0] * len(reqs)
    # each prompt's latest token and text, sent once the next item shows its text is complete
    held: list[tuple[list[int], str] | None] = [None] * len(reqs)

    def event(i: int) -> str:
        toks, text = held[i] or ([], "")
        held[i] = None
        sent[i] += len(toks)
        return sse(_native_chunk(state, body, reqs[i], i, toks, text, sent[i] - len(toks)))

    if body.return_progress and body.stream:
        for i, r in enumerate(reqs):
            async for extra in progress_fields(r, body.timings_per_token):
                yield sse({"index": i, "content": "", "tokens": [], "stop": False, "id_slot": -1, **extra})
    async for i, item in merge_iters([token_chunks(r) for r in reqs]):
        if item is None:
            if held[i] is not None:
                yield event(i)
            yield sse(native_final(state, body, settings, reqs[i].prompt_tokens, await reqs[i].aresult(), i))
            continue
        toks, text = item
        prev = held[i]
        if not toks and prev is not None:
            held[i] = (prev[0], prev[1] + text)
            continue
        if prev is not None:
            yield event(i)
        for tok in toks[:-1]:
            held[i] = ([tok], "")
            yield event(i)
        held[i] = (toks[-1:], text)
