"""From an HTTP request to engine requests and back: checks of counts, the
GenerationParams of a body, submission in a worker thread, awaiting results
while watching for a disconnect, and Server-Sent Event streams.

Every generation goes to the engine through :meth:`cortex_llama.LLM.submit`, so
concurrent clients share decodes (continuous batching). A client that
disconnects, streaming or not, has its requests cancelled, which frees their
slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import (TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence,
                    TypeVar, Union)

from fastapi.responses import StreamingResponse
from starlette.requests import Request as HTTPRequest

from ..llm import Completion, GenerationParams
from .errors import APIError, exceed_context, from_exception, invalid_value
from .schemas import (ChatCompletionRequest, CompletionRequest, NamedToolChoice, NativeCompletionRequest,
                      PromptTokensDetails, Usage)
from .state import ServerState

if TYPE_CHECKING:
    from ..gen.request import PromptProgress, Request

__all__ = ["FINISH", "Job", "SSETemplate", "sse", "check_counts", "gen_params", "constraint",
           "choice_params", "submit", "submit_each", "results_or_disconnect", "stream_response", "merge",
           "merge_iters", "cancel_all", "chat_inputs", "native_prompts", "native_logit_bias",
           "native_n_predict", "native_params", "token_chunks", "progress_updates", "progress_json"]

FINISH = {"stop": "stop", "end-of-generation": "stop", "length": "length", "cancelled": "cancelled"}
T = TypeVar("T")


# -- SSE ----------------------------------------------------------------------------------------
def sse(obj: Any) -> str:
    """One Server-Sent Event carrying ``obj`` (a pydantic model or JSON-able data)."""
    if hasattr(obj, "model_dump_json"):
        return f"data: {obj.model_dump_json(exclude_unset=True)}\n\n"
    return f"data: {json.dumps(obj)}\n\n"


class SSETemplate:
    """The SSE event of a model whose one text field varies, rendered once by
    pydantic and then filled by string concatenation (same bytes, ~5x faster)."""

    _MARK = "\x00cortex-llama-text\x00"

    def __init__(self, model: Any) -> None:
        event = sse(model)
        self.head, self.tail = event.split(json.dumps(self._MARK), 1)

    @classmethod
    def mark(cls) -> str:
        """The placeholder to put in the varying field of the model given to the constructor."""
        return cls._MARK

    def fill(self, text: str) -> str:
        # json.dumps(text) without its two Python frames (the same C encoder, ASCII-only output)
        return self.head + encode_basestring_ascii(text) + self.tail


# -- request checks ---------------------------------------------------------------------------
def check_counts(state: ServerState, n: int, max_tokens: int | None, param: str) -> None:
    """Raises :class:`APIError` (400) when ``n`` is more than the slots or
    ``max_tokens`` (the field ``param``) more than the context."""
    slots = state.llm.config.n_seq_max
    if n > slots:
        raise APIError(400, f"n: {n} choices are more than the server's {slots} parallel slots "
                            f"(--parallel)", param="n", code="invalid_value")
    n_ctx = state.llm.config.context_size
    if max_tokens is not None and max_tokens > n_ctx:
        raise APIError(400, f"{param}: {max_tokens} is larger than the context size {n_ctx} "
                            f"(--ctx-size)", param=param, code="invalid_value")


def _logit_bias(state: ServerState, raw: dict[str, float]) -> dict[int, float]:
    n_vocab = state.llm.model.n_vocab
    bias: dict[int, float] = {}
    for k, v in raw.items():
        if not k.lstrip("-").isdigit() or not 0 <= int(k) < n_vocab:
            raise APIError(400, f"logit_bias: key {k!r} is not a token id in [0, {n_vocab})",
                           param="logit_bias", code="invalid_value")
        if not -100 <= v <= 100:
            raise APIError(400, f"logit_bias: value {v} for token {k} is outside [-100, 100]",
                           param="logit_bias", code="invalid_value")
        bias[int(k)] = v
    return bias


def gen_params(state: ServerState, body: Union[CompletionRequest, ChatCompletionRequest], max_tokens: int,
               logprobs: int | None, grammar: str | None, json_schema: dict[str, Any] | None) -> GenerationParams:
    """The GenerationParams of a request body. Raises :class:`APIError` (400) naming
    the field of a bad value."""
    kw: dict[str, Any] = dict(state.sampling)  # the server's defaults (--temp, ...)
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty",
                 "presence_penalty"):
        v = getattr(body, name)
        if v is not None:
            kw[name] = v
    if body.stop is not None:
        kw["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    if body.seed is not None:
        kw["seed"] = body.seed % 2**32
    if body.logit_bias:
        kw["logit_bias"] = _logit_bias(state, body.logit_bias)
    if body.lora is not None:
        kw["lora"] = lora_scales(body.lora)
    if getattr(body, "return_progress", False) and body.stream:
        kw["return_progress"] = True
    try:
        return GenerationParams(max_tokens=max_tokens, logprobs=logprobs, grammar=grammar,
                                json_schema=json_schema, **kw)
    except (ValueError, TypeError) as exc:
        raise from_exception(exc) from None


def lora_scales(entries: list[Any], param: str = "lora") -> dict[int, float]:
    """llama-server's ``[{"id": 0, "scale": 0.5}, ...]`` as scales by adapter id
    (the ids are checked against the loaded adapters at submit). Raises
    :class:`APIError` (400) naming the entry of a malformed one."""
    out: dict[int, float] = {}
    for i, e in enumerate(entries):
        where = f"{param}[{i}]"
        if not isinstance(e, dict):
            raise invalid_value(where, 'must be an object {"id": int, "scale": number}')
        ident, scale = e.get("id"), e.get("scale", 0.0)
        if isinstance(ident, bool) or not isinstance(ident, int):
            raise invalid_value(f"{where}.id", f"must be an adapter id (an integer), got {ident!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise invalid_value(f"{where}.scale", f"must be a number, got {scale!r}")
        out[ident] = float(scale)
    return out


def constraint(body: Union[CompletionRequest, ChatCompletionRequest]
               ) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(grammar, json_schema, the request field they come from) of a body. Never raises."""
    if body.grammar is not None:
        return body.grammar, None, "grammar"
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None, None, None
    if rf.type == "json_object":
        return None, rf.schema_ or {"type": "object"}, "response_format"
    schema = rf.json_schema.schema_ if rf.json_schema is not None else rf.schema_
    return None, schema, "response_format"


def chat_constraint_param(body: ChatCompletionRequest, opts: Mapping[str, Any]) -> str | None:
    """The chat request field that constrains its output (``grammar``,
    ``response_format`` or ``tools``, as :func:`chat_inputs` put them in ``opts``),
    or None. Never raises."""
    if body.grammar is not None:
        return "grammar"
    return "response_format" if "response_format" in opts else "tools" if body.tools else None


def choice_params(params: GenerationParams, n: int) -> list[GenerationParams]:
    """The parameters of ``n`` choices: choice j is seeded ``seed + j`` when a seed is given."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=(params.seed + j) % 2**32) for j in range(n)]


# -- submission and results ---------------------------------------------------------------------
@dataclass
class Job:
    """One HTTP generation request turned into engine requests (n per prompt)."""

    reqs: list[Request]
    n: int  # choices per prompt
    top_logprobs: int | None = None
    echo: list[str] | None = None  # prompt texts to prepend (completions echo)

    def usage(self, results: Sequence[Completion] | None = None) -> Usage:
        prompt = cached = 0
        for i in range(0, len(self.reqs), self.n):
            prompt += len(self.reqs[i].prompt_tokens)
            cached += (results[i].usage if results else self.reqs[i].usage).cached_tokens
        completion = sum(len(c.tokens) for c in results) if results else sum(len(r.tokens) for r in self.reqs)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def cancel_all(reqs: Sequence[Request]) -> None:
    for r in reqs:
        r.cancel()


#: a request whose prompt (or messages' text) is at most this many characters or
#: tokens, with no grammar, schema, tools or media, is submitted on the event loop:
#: tokenizing it takes well under a millisecond, less than the hop to a worker
#: thread, which on a machine whose cores all compute waits for one of them
INLINE_PROMPT_CHARS = 8192


def light_prompts(prompts: Sequence[Union[str, list[int]]]) -> bool:
    """Whether completion ``prompts`` are short enough to submit inline (see
    :data:`INLINE_PROMPT_CHARS`)."""
    return sum(len(p) for p in prompts) <= INLINE_PROMPT_CHARS


def light_messages(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether chat ``messages`` are text only (strings or text parts) and short
    enough to render and submit inline (see :data:`INLINE_PROMPT_CHARS`)."""
    size = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            size += len(content)
        elif content is not None:
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    return False
                size += len(str(part.get("text") or ""))
        if m.get("tool_calls"):
            size += len(json.dumps(m["tool_calls"]))
    return size <= INLINE_PROMPT_CHARS


async def submit(make: Callable[[], list[Request]], prompt_param: str,
                 grammar_param: str | None, *, inline: bool = False) -> list[Request]:
    """Run ``make`` (tokenize, render, submit) in a worker thread, or here when
    ``inline`` (a light request: :func:`light_prompts`, :func:`light_messages`;
    measured on 2 cores, 2 threads, SmolLM2: 8 streaming clients 119-126 -> 131-149
    tok/s, one client's TTFT p50 70 -> 67-68 ms). Raises :class:`APIError`: 4xx
    for a bad request, 503 for a full queue."""
    try:
        return make() if inline else await asyncio.to_thread(make)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param=prompt_param, grammar_param=grammar_param) from None


def submit_each(state: ServerState, prompts: Sequence[Union[str, list[int]]], n: int,
                params: GenerationParams) -> list[Request]:
    """``n`` engine requests per prompt (all cancelled when one fails). Raises
    like :meth:`LLM.submit`."""
    reqs: list[Request] = []
    try:
        for prompt in prompts:
            for p in choice_params(params, n):
                reqs.append(state.llm.submit(prompt, p))
    except BaseException:
        cancel_all(reqs)
        raise
    return reqs


async def _disconnected(raw: HTTPRequest) -> None:
    """Returns when the client has gone (the body is already read)."""
    while True:
        msg = await raw.receive()
        if msg["type"] == "http.disconnect":
            return


async def _until_disconnect(raw: HTTPRequest, work: Awaitable[T]) -> T | None:
    """Await ``work``; None when the client disconnects first (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(raw))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        return None
    finally:
        watch.cancel()
        task.cancel()


async def results_or_disconnect(raw: HTTPRequest, job: Job) -> list[Completion] | None:
    """The job's results; None when the client went away first (its requests are
    cancelled). Raises :class:`APIError` when the engine failed a request."""
    try:
        return await _until_disconnect(raw, asyncio.gather(*(r.aresult() for r in job.reqs)))
    except Exception as exc:  # noqa: BLE001 - the engine failed a request
        raise from_exception(exc) from None
    finally:
        cancel_all(job.reqs)  # no-op for finished requests


def stream_response(gen: AsyncIterator[str], job: Job) -> StreamingResponse:
    """An SSE response of ``gen``'s events; an error mid-stream is sent as an event,
    and the job's requests are cancelled when the stream ends or the client leaves."""
    async def body() -> AsyncIterator[str]:
        try:
            async for event in gen:
                yield event
        except Exception as exc:  # noqa: BLE001 - reported in the stream, the server goes on
            yield sse(from_exception(exc).body())
        finally:
            cancel_all(job.reqs)
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def progress_updates(req: Request) -> AsyncIterator[PromptProgress]:
    """Each prefill progress update of ``req`` (``GenerationParams.return_progress``)
    until its whole prompt is in the cache or it ends."""
    event = asyncio.Event()
    waker = (asyncio.get_running_loop(), event.set)
    req.add_waker(waker)
    i = 0
    try:
        while True:
            event.clear()
            log = req.progress_log
            while i < len(log):
                i += 1
                yield log[i - 1]
                if log[i - 1].processed >= log[i - 1].total:
                    return
            if req.done:
                return
            await event.wait()
    finally:
        req.remove_waker(waker)


def progress_json(p: PromptProgress) -> dict[str, Any]:
    """llama-server's ``prompt_progress`` object."""
    return {"total": p.total, "cache": p.cache, "processed": p.processed, "time_ms": p.time_ms}


# -- merging streams ----------------------------------------------------------------------------
async def _deltas(req: Request) -> AsyncIterator[str]:
    """The request's text as it comes, with every delta already waiting joined into
    one (so a loop that falls behind the engine sends fewer, larger chunks).
    Leaving early cancels the request; its error is raised after its last text."""
    async with contextlib.aclosing(token_chunks(req)) as chunks:
        async for _, text in chunks:
            if text:
                yield text


async def merge_iters(iters: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T | None]]:
    """(index, item) of several async iterators as items come; (i, None) once
    iterator i has ended. An iterator's error is raised after its items."""
    if len(iters) == 1:
        async for item in iters[0]:
            yield 0, item
        yield 0, None
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for item in it:
                queue.put_nowait((i, item))
            queue.put_nowait((i, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(iters)]
    try:
        left = len(iters)
        while left:
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                left -= 1
            yield i, item
    finally:
        for t in tasks:
            t.cancel()


def merge(reqs: Sequence[Request]) -> AsyncIterator[tuple[int, str | None]]:
    """(choice index, text) of several requests as they come; (i, None) once
    request i has finished."""
    return merge_iters([_deltas(r) for r in reqs])


# -- chat requests ------------------------------------------------------------------------------
def chat_inputs(state: ServerState, body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(OpenAI messages, ChatOptions fields) of a chat request. Never raises: the
    chat layer checks them."""
    messages = []
    for m in body.messages:
        msg = m.model_dump(exclude_none=True)
        if m.content is None:
            msg["content"] = None
        for call in msg.get("tool_calls") or ():
            if not isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
        messages.append(msg)
    opts: dict[str, Any] = {
        "reasoning_format": body.reasoning_format or state.reasoning_format,
        "add_generation_prompt": body.add_generation_prompt,
        "media_policy": state.media,
    }
    if body.tools:
        opts["tools"] = [t.model_dump(exclude_none=True, by_alias=True) for t in body.tools]
        choice = body.tool_choice
        opts["tool_choice"] = choice.model_dump() if isinstance(choice, NamedToolChoice) else (choice or "auto")
    for name in ("parallel_tool_calls", "reasoning_effort", "chat_template_kwargs", "continue_final_message"):
        if getattr(body, name) is not None:
            opts[name] = getattr(body, name)
    if state.enable_thinking is not None and "enable_thinking" not in (body.chat_template_kwargs or {}):
        opts["enable_thinking"] = state.enable_thinking  # --reasoning on|off
    rf = body.response_format
    if body.json_schema is not None:  # llama-server's shorthand
        opts["response_format"] = {"type": "json_schema", "json_schema": {"schema": body.json_schema}}
    elif rf is not None and rf.type != "text":
        schema = rf.json_schema.schema_ if rf.json_schema is not None else rf.schema_
        opts["response_format"] = ({"type": "json_object", "schema": schema} if rf.type == "json_object"
                                   else {"type": "json_schema", "json_schema": {"schema": schema}})
    return messages, opts


# -- llama-server's native /completion ---------------------------------------------------------
_PROMPT_STRING = "prompt_string"
_MULTIMODAL = "multimodal_data"


def _is_mixed(items: list[Any]) -> bool:
    """A list of token ids and strings (at least one id): one prompt, not several."""
    return any(isinstance(x, int) and not isinstance(x, bool) for x in items) and \
        all(isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)) for x in items)


def _one_prompt(state: ServerState, prompt: Any, param: str) -> list[int]:
    """The tokens of one native prompt: a string (BOS added, special tokens parsed),
    a list of ids and strings, or ``{"prompt_string": ...}``. Raises :class:`APIError`
    (400) naming ``param``."""
    llm = state.llm
    if isinstance(prompt, dict):
        if prompt.get(_MULTIMODAL):
            raise APIError(400, f"{param}.{_MULTIMODAL}: this /completion does not take media "
                                "(send images in /v1/chat/completions messages)", param=param,
                           code="invalid_value")
        text = prompt.get(_PROMPT_STRING)
        if not isinstance(text, str):
            raise APIError(400, f"{param}.{_PROMPT_STRING}: must be a string", param=param, code="invalid_value")
        prompt = text
    if isinstance(prompt, str):
        toks = llm.tokenize(prompt, add_special=True, parse_special=True)
    elif isinstance(prompt, list) and (not prompt or _is_mixed(prompt)):
        toks = []
        for i, part in enumerate(prompt):
            toks += llm.tokenize(part, add_special=i == 0, parse_special=True) if isinstance(part, str) else [part]
    else:
        raise APIError(400, f"{param}: must be a string, a list of token ids and strings, or an object "
                            f"with {_PROMPT_STRING!r}", param=param, code="invalid_value")
    if not toks:
        raise APIError(400, f"{param}: must not be empty", param=param, code="invalid_value")
    n_vocab = llm.model.n_vocab
    bad = next((t for t in toks if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise APIError(400, f"{param}: token {bad} is not in [0, {n_vocab})", param=param, code="invalid_value")
    return toks


def native_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    """The token lists of a native ``prompt`` (one per answer), each checked
    against the context. Raises :class:`APIError`: 400 naming ``prompt[i]``, and
    400 of type ``exceed_context_size_error`` for a prompt that does not fit."""
    single = isinstance(prompt, (str, dict)) or (isinstance(prompt, list) and _is_mixed(prompt))
    if single:
        prompts = [_one_prompt(state, prompt, "prompt")]
    elif not prompt:
        raise APIError(400, "prompt: must not be an empty list", param="prompt", code="invalid_value")
    else:
        prompts = [_one_prompt(state, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    n_ctx = state.llm.config.context_size
    for toks in prompts:
        if len(toks) >= n_ctx:
            raise exceed_context(len(toks), n_ctx)
    return prompts


def _bias_value(v: Any, where: str) -> float:
    if v is False:
        return float("-inf")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
        return float(v)
    raise APIError(400, f"logit_bias: {where}: the bias must be a number or false (never), got {v!r}",
                   param="logit_bias", code="invalid_value")


def native_logit_bias(state: ServerState, raw: Union[list[list[Any]], dict[str, Any]]) -> dict[int, float]:
    """llama-server's ``logit_bias``: ``[[token_or_text, bias], ...]`` or
    ``{"token_or_text": bias}``; a text biases each of its tokens, ``false`` is
    -inf. Raises :class:`APIError` (400) naming the entry."""
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    n_vocab = state.llm.model.n_vocab
    bias: dict[int, float] = {}
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise APIError(400, f"logit_bias[{i}]: must be a [token, bias] pair", param="logit_bias",
                           code="invalid_value")
        key, value = pair
        b = _bias_value(value, f"entry {i}")
        if isinstance(key, str) and key.lstrip("-").isdigit() and isinstance(raw, dict):
            key = int(key)
        toks = state.llm.tokenize(key, add_special=False) if isinstance(key, str) else [key]
        for t in toks:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n_vocab:
                raise APIError(400, f"logit_bias[{i}]: token {t!r} is not in [0, {n_vocab})",
                               param="logit_bias", code="invalid_value")
            bias[t] = b
    return bias


def native_n_predict(state: ServerState, requested: int | None) -> int:
    """The tokens a native request may generate: its ``n_predict``, else (or for
    -1) the server's ``-n``, as llama-server's (the request's own number wins, more
    than ``-n`` too); -1 means no limit. Never raises."""
    return state.n_predict if requested is None or requested < 0 else requested


def native_params(state: ServerState, body: NativeCompletionRequest) -> GenerationParams:
    """The GenerationParams of a native body (the server's defaults beneath).
    Raises :class:`APIError` (400) naming the field of a bad value."""
    kw: dict[str, Any] = dict(state.sampling)
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty",
                 "presence_penalty"):
        if getattr(body, name) is not None:
            kw[name] = getattr(body, name)
    if body.repeat_last_n is not None:
        kw["penalty_last_n"] = body.repeat_last_n
    if body.stop:
        kw["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    if body.seed is not None and body.seed >= 0:
        kw["seed"] = body.seed % 2**32
    bias = native_logit_bias(state, body.logit_bias) if body.logit_bias else {}
    if body.ignore_eos:
        bias.update({t: float("-inf") for t in state.eog_tokens()})
    n = native_n_predict(state, body.n_predict if body.n_predict is not None else body.max_tokens)
    if body.id_slot >= state.llm.config.n_seq_max or body.id_slot < -1:
        raise invalid_value("id_slot", f"{body.id_slot} is not -1 (any slot) or in [0, {state.llm.config.n_seq_max})")
    if body.id_slot >= 0:
        kw["slot"] = body.id_slot
    if body.lora is not None:
        kw["lora"] = lora_scales(body.lora)
    if body.return_progress and body.stream:
        kw["return_progress"] = True
    try:
        return GenerationParams(max_tokens=n if n >= 0 else state.llm.config.context_size,
                                logprobs=body.n_probs or None, grammar=body.grammar,
                                json_schema=body.json_schema, logit_bias=bias or None, **kw)
    except (ValueError, TypeError) as exc:
        raise from_exception(exc) from None


async def token_chunks(req: Request) -> AsyncGenerator[tuple[list[int], str], None]:
    """(new tokens, new text) of a request as they come: every token once, the
    text that became ready with it (text held back for a stop string comes with
    a later token). Leaving early cancels the request; its error is raised at the end."""
    event = asyncio.Event()
    waker = (asyncio.get_running_loop(), event.set)
    req.add_waker(waker)
    i = sent = 0
    try:
        while True:
            event.clear()
            done = req.done
            parts = req.deltas_from(i)
            i += len(parts)
            n = len(req.tokens)
            if n > sent or parts:
                yield list(req.tokens[sent:n]), "".join(parts)
                sent = n
            elif done:
                return
            else:
                await event.wait()
    finally:
        req.remove_waker(waker)
        if not req.done:
            req.cancel()
