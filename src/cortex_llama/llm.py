"""The high-level API: ``LLM`` with ``ModelConfig`` and ``GenerationParams``.

It follows the design's ``Model`` trait (name, capabilities, load, unload,
is_loaded, complete, chat, embed, tokenize) and does O(1) Python work per
generated token: text is produced by an incremental detokenizer, stop strings
are matched in a bounded window, and logprobs come from numpy over the logits.

Threading: one ``LLM`` serializes its calls with a lock. The async methods run
the same code in a worker thread, so concurrent ``await``s on one ``LLM`` are
*serialized* safely (use :meth:`LLM.generate` / :meth:`LLM.agenerate` to run
many prompts in parallel in one batch). The event loop is never blocked by a
decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence, TypeVar, Union

import numpy as np

from . import chat as chat_templates
from .batch import Batch
from .context import Context
from .errors import ClosedError, LlamaError
from .json_schema import schema_to_gbnf
from .model import Model
from .sampling import SamplerChain

__all__ = ["LLM", "ModelConfig", "GenerationParams", "Completion", "Usage", "Timings",
           "TokenLogprob", "FINISH_STOP", "FINISH_LENGTH", "FINISH_EOG"]

FINISH_STOP = "stop"  # a stop string matched
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_EOG = "end-of-generation"  # the model emitted an end-of-generation token


@dataclass
class ModelConfig:
    """How to load a model and size its context (the design's ``ModelConfig``).

    Raises ``ValueError`` naming the field for impossible values.
    """

    model_path: Union[str, "os.PathLike[str]"]
    context_size: int = 4096
    gpu_layers: int = 0
    threads: int = 4
    batch_size: int = 512
    seed: int | None = None
    threads_batch: int | None = None
    ubatch_size: int | None = None
    n_seq_max: int = 4  # parallel sequences for generate()
    embeddings: bool = True  # allow embed() (a second, embedding context, made on demand)
    pooling: str | None = None  # embed() pooling: None = the model's, or mean/cls/last
    flash_attn: bool | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    type_k: str | None = None
    type_v: str | None = None
    kv_overrides: Mapping[str, Any] | None = None
    chat_template: str | None = None  # a built-in name or a Jinja template
    devices: Sequence[str] | None = None  # offload device names (None: every local GPU)
    rpc_servers: Sequence[str] | None = None  # "host:port" of llama.cpp RPC servers

    def __post_init__(self) -> None:
        for name in ("context_size", "threads", "batch_size", "n_seq_max"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_seq_max > self.batch_size:
            raise ValueError(f"ModelConfig.n_seq_max ({self.n_seq_max}) must not exceed "
                             f"batch_size ({self.batch_size})")
        if self.gpu_layers < -1:
            raise ValueError(f"ModelConfig.gpu_layers must be >= -1 (-1: all), got {self.gpu_layers}")
        for name in ("threads_batch", "ubatch_size"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {v}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"ModelConfig.seed must be in [0, 2**32), got {self.seed}")


@dataclass
class GenerationParams:
    """How to generate (the design's ``GenerationParams``).

    ``temperature=0`` is greedy. ``stop`` strings end generation and are not
    returned. ``grammar`` (GBNF) or ``json_schema`` constrain the output.
    ``logprobs=N`` returns the top-N log probabilities of every generated token.
    Raises ``ValueError`` naming the field for out-of-range values.
    """

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64  # tokens the penalties look back over (0: off, -1: the whole context)
    stop: Sequence[str] = ()
    seed: int | None = None
    grammar: str | None = None
    json_schema: Mapping[str, Any] | str | None = None
    logit_bias: Mapping[int, float] | None = None
    logprobs: int | None = None
    truncate: bool = False  # drop the start of a too-long prompt instead of raising

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if self.max_tokens < 0:
            raise ValueError(f"GenerationParams.max_tokens must be >= 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"GenerationParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"GenerationParams.top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"GenerationParams.min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"GenerationParams.repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.penalty_last_n < -1:
            raise ValueError(f"GenerationParams.penalty_last_n must be >= -1, got {self.penalty_last_n}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("GenerationParams.stop must hold non-empty strings")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"GenerationParams.seed must be in [0, 2**32), got {self.seed}")
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("GenerationParams: give grammar or json_schema, not both")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"GenerationParams.logprobs must be >= 0, got {self.logprobs}")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache, not evaluated

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    prompt_ms: float = 0.0  # evaluating the prompt (first token latency)
    generation_ms: float = 0.0  # generating the completion


@dataclass
class TokenLogprob:
    token: int
    text: str
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), best first


@dataclass
class Completion:
    """The result of a completion: text, tokens, why it stopped, usage and timings."""

    text: str
    tokens: list[int]
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    logprobs: list[TokenLogprob] | None = None

    @property
    def tokens_per_second(self) -> float:
        ms = self.timings.generation_ms
        return len(self.tokens) / (ms / 1000) if ms > 0 else 0.0


def log_softmax_norm(logits: np.ndarray) -> float:
    """log(sum(exp(logits))), computed stably in float64."""
    m = float(logits.max())
    return m + math.log(float(np.exp(logits - m, dtype=np.float64).sum()))


def top_logprobs(logits: np.ndarray, n: int, lse: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most likely token ids and their log probabilities, best first.

    Uses ``argpartition`` (O(n_vocab)), never a full sort of the vocabulary.
    """
    if lse is None:
        lse = log_softmax_norm(logits)
    if n <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    n = min(n, logits.size)
    idx = np.argpartition(-logits, n - 1)[:n]
    idx = idx[np.argsort(-logits[idx], kind="stable")]
    return idx, logits[idx].astype(np.float64) - lse


class _StopMatcher:
    """Finds stop strings in streamed text, holding back only a possible prefix.

    Work per delta is bounded by the longest stop string, whatever the length of
    the output so far.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.keep = max((len(s) for s in self.stops), default=0) - 1
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        if not self.stops:
            return delta, False
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        # hold back the longest suffix that could still start a stop string
        hold = 0
        for k in range(min(self.keep, len(self.pending)), 0, -1):
            tail = self.pending[-k:]
            if any(s.startswith(tail) for s in self.stops):
                hold = k
                break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _Sequence:
    """Generation state of one sequence (one prompt)."""

    def __init__(self, llm: LLM, params: GenerationParams, seq_id: int, prompt: list[int]) -> None:
        self.params = params
        self.seq_id = seq_id
        self.chain = llm._sampler(params)
        if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            # penalties see the prompt too (as in llama-server); the window is what counts
            last_n = params.penalty_last_n
            self.chain.accept_history(prompt if last_n < 0 else prompt[max(0, len(prompt) - last_n):])
        self.vocab = llm.model.vocab
        self.eog = llm._eog_cache  # token -> is end-of-generation, shared per model
        self.detok = self.vocab.detokenizer()
        self.stop = _StopMatcher(params.stop)
        self.tokens: list[int] = []
        self.text_parts: list[str] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.finish: str | None = FINISH_LENGTH if params.max_tokens == 0 else None
        self.pos = len(prompt)  # position of the next token
        self.row = -1  # batch row holding this sequence's latest logits
        self.n_prompt = len(prompt)
        self.cached = 0
        self.t_prompt = 0.0
        self.t_gen = 0.0

    def _tail(self) -> str:
        """Text held back by the detokenizer and the stop matcher, at the end."""
        out, stopped = self.stop.feed(self.detok.flush())
        if stopped:
            self.finish = FINISH_STOP
            return out
        return out + self.stop.flush()

    def step(self, ctx: Context) -> str:
        """Sample the next token from row ``self.row``; returns the new text."""
        logits = ctx.logits(self.row) if self.logprobs is not None else None
        tok = self.chain.sample(ctx, self.row)
        eog = self.eog.get(tok)
        if eog is None:
            eog = self.eog[tok] = self.vocab.is_eog(tok)
        if eog:
            self.finish = FINISH_EOG
            out = self._tail()
        else:
            self.tokens.append(tok)
            if logits is not None:
                self._logprob(logits, tok)
            out, stopped = self.stop.feed(self.detok.feed(tok))
            if stopped:
                self.finish = FINISH_STOP
            elif len(self.tokens) >= self.params.max_tokens:
                self.finish = FINISH_LENGTH
                out += self._tail()
        self.text_parts.append(out)
        return out

    def _logprob(self, logits: np.ndarray, tok: int) -> None:
        lse = log_softmax_norm(logits)
        ids, lps = top_logprobs(logits, self.params.logprobs or 0, lse)
        assert self.logprobs is not None
        self.logprobs.append(TokenLogprob(
            tok, self.detok.piece(tok).decode("utf-8", "replace"), float(logits[tok]) - lse,
            list(zip(ids.tolist(), lps.tolist()))))


Messages = Sequence[Mapping[str, Any]]


class LLM:
    """A loaded model with a context, ready to complete, stream, chat and embed.

    ``LLM(config_or_path, **overrides)``: overrides replace ``ModelConfig``
    fields (``LLM("m.gguf", context_size=2048, threads=8)``). The model loads
    at once unless ``load=False``. Works as a context manager; after
    :meth:`unload` every call raises :class:`ClosedError` until :meth:`load`.
    """

    def __init__(self, config: ModelConfig | str | os.PathLike[str], *, load: bool = True,
                 progress: Callable[[float], bool | None] | None = None, **overrides: Any) -> None:
        if not isinstance(config, ModelConfig):
            config = ModelConfig(model_path=config)
        self.config = _with_overrides(config, overrides)
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread id inside a call (see _exclusive)
        self._model: Model | None = None
        self._ctx: Context | None = None
        self._embed_ctx: Context | None = None
        self._batch: Batch | None = None
        self._cache: list[int] = []  # tokens in the KV cache of sequence 0
        self._eog_cache: dict[int, bool] = {}
        self.stats = {"prompt_tokens_evaluated": 0, "prompt_tokens_reused": 0}
        self._progress = progress
        if load:
            self.load()

    # -- the Model trait ---------------------------------------------------------
    @property
    def name(self) -> str:
        if self._model is not None:
            return self._model.meta("general.name") or Path(self.config.model_path).stem
        return Path(self.config.model_path).stem

    @property
    def capabilities(self) -> frozenset[str]:
        """What this model can do: completion, chat, embeddings, tokenize, grammar."""
        m = self._require()
        caps = {"tokenize"}
        if m.has_decoder:
            caps |= {"completion", "grammar"}
            caps.add("chat")  # the model's template, or ChatML as the fallback
        if self.config.embeddings:
            caps.add("embeddings")
        return frozenset(caps)

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def load(self) -> LLM:
        """Load the model and create the context (no-op when loaded).

        Raises :class:`ModelLoadError` / :class:`ContextError`.
        """
        with self._exclusive():
            if self._model is not None:
                return self
            c = self.config
            model = Model(c.model_path, n_gpu_layers=c.gpu_layers, use_mmap=c.use_mmap,
                          use_mlock=c.use_mlock, kv_overrides=c.kv_overrides, progress=self._progress,
                          devices=c.devices, rpc_servers=c.rpc_servers)
            try:
                ctx = Context(model, n_ctx=c.context_size, n_batch=c.batch_size, n_ubatch=c.ubatch_size,
                              n_seq_max=c.n_seq_max, n_threads=c.threads, n_threads_batch=c.threads_batch,
                              flash_attn=c.flash_attn, type_k=c.type_k, type_v=c.type_v, kv_unified=True)
            except BaseException:
                model.close()
                raise
            self._model, self._ctx = model, ctx
            self._batch = ctx.new_batch()
            self._cache = []
            return self

    def unload(self) -> None:
        """Free the model and its contexts. Idempotent."""
        with self._exclusive():
            if self._model is not None:
                self._model.close()  # closes the contexts too
            self._model = self._ctx = self._embed_ctx = self._batch = None
            self._cache = []

    close = unload

    def __enter__(self) -> LLM:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def __repr__(self) -> str:
        return f"<LLM {self.name!r} {'loaded' if self.is_loaded else 'unloaded'}>"

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the LLM for one call. Other threads wait; the same thread calling
        again from inside an open stream gets an error instead of corrupting the
        cache it is streaming from."""
        me = threading.get_ident()
        if self._owner == me:
            raise LlamaError("this LLM is busy with an unfinished stream in this thread: "
                             "finish or close() the stream first")
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def _require(self) -> Model:
        if self._model is None:
            raise ClosedError(f"the model {self.name!r} is not loaded: call load() first")
        return self._model

    @property
    def model(self) -> Model:
        """The underlying :class:`Model` (object layer)."""
        return self._require()

    @property
    def context(self) -> Context:
        self._require()
        assert self._ctx is not None
        return self._ctx

    # -- tokens ------------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self._require().tokenize(text, add_special, parse_special).tolist()

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False) -> str:
        return self._require().detokenize(tokens, remove_special)

    def count_tokens(self, text: str, add_special: bool = True) -> int:
        return int(self._require().tokenize(text, add_special).size)

    # -- generation internals ------------------------------------------------------
    def _params(self, params: GenerationParams | None, overrides: Mapping[str, Any]) -> GenerationParams:
        return _with_overrides(params or GenerationParams(), overrides)

    def _sampler(self, p: GenerationParams) -> SamplerChain:
        grammar = p.grammar
        if p.json_schema is not None:
            grammar = schema_to_gbnf(p.json_schema)  # type: ignore[arg-type]
        seed = p.seed if p.seed is not None else self.config.seed
        return SamplerChain.from_params(
            self._require(), temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
            repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty, penalty_last_n=p.penalty_last_n, seed=seed,
            logit_bias=p.logit_bias, grammar=grammar, n_ctx=self.context.n_ctx)

    def _prompt_tokens(self, prompt: str | Sequence[int], p: GenerationParams) -> list[int]:
        model = self._require()
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            toks = model.tokenize(prompt, add_special=True, parse_special=True).tolist()
        else:
            toks = model.vocab.check_tokens(list(prompt)).tolist()
            if not toks:
                raise ValueError("prompt is empty")
        n_ctx = self.context.n_ctx
        limit = n_ctx - min(p.max_tokens, n_ctx // 2) if p.truncate else n_ctx - 1
        if len(toks) > limit:
            if not p.truncate:
                raise ValueError(f"prompt of {len(toks)} tokens does not fit the context of {n_ctx} "
                                 f"tokens (ModelConfig.context_size); pass truncate=True to keep its end")
            toks = toks[-limit:]
        return toks

    def _prefill(self, seq_id: int, toks: list[int], reuse: bool) -> int:
        """Evaluate ``toks`` into ``seq_id``, reusing the cached prefix of sequence 0.

        Returns the batch row holding the last token's logits.
        """
        ctx, batch = self.context, self._batch
        assert batch is not None
        start = 0
        if reuse:
            common = 0
            for a, b in zip(self._cache, toks):
                if a != b:
                    break
                common += 1
            start = min(common, len(toks) - 1)  # re-evaluate at least one token for logits
            ctx.seq_rm(seq_id, start, -1)
            self.stats["prompt_tokens_reused"] += start
        else:
            ctx.seq_rm(seq_id, -1, -1)
        self.stats["prompt_tokens_evaluated"] += len(toks) - start
        self._cache = toks[:start]
        n_batch = ctx.n_batch
        row = -1
        for a in range(start, len(toks), n_batch):
            chunk = toks[a: a + n_batch]
            batch.clear()
            sl = batch.add_many(chunk, a, seq_id)
            ctx.decode(batch)
            self._cache.extend(chunk)
            row = sl.stop - 1
        return row

    def _run_one(self, prompt: str | Sequence[int], p: GenerationParams) -> Iterator[tuple[str, _Sequence]]:
        """Generate for one prompt in sequence 0, yielding (text delta, state)."""
        with self._exclusive():
            ctx, batch = self.context, self._batch
            assert batch is not None
            toks = self._prompt_tokens(prompt, p)
            seq = _Sequence(self, p, 0, toks)
            t0 = time.perf_counter()
            reused = self.stats["prompt_tokens_reused"]
            seq.row = self._prefill(0, toks, reuse=True)
            seq.cached = self.stats["prompt_tokens_reused"] - reused
            t1 = time.perf_counter()
            seq.t_prompt = t1 - t0
            n_ctx = ctx.n_ctx
            try:
                while seq.finish is None:
                    if seq.pos >= n_ctx:
                        seq.finish = FINISH_LENGTH
                        break
                    delta = seq.step(ctx)
                    if delta:
                        yield delta, seq
                    if seq.finish is not None:
                        break
                    ctx.decode_one(seq.tokens[-1], seq.pos, 0)
                    self._cache.append(seq.tokens[-1])  # the KV cache holds exactly _cache
                    seq.pos += 1
                    seq.row = 0
            finally:
                seq.t_gen = time.perf_counter() - t1
            yield "", seq

    def _completion(self, seq: _Sequence) -> Completion:
        return Completion(
            text="".join(seq.text_parts), tokens=list(seq.tokens), finish_reason=seq.finish or FINISH_LENGTH,
            usage=Usage(seq.n_prompt, len(seq.tokens), seq.cached),
            timings=Timings(seq.t_prompt * 1000, seq.t_gen * 1000),
            logprobs=seq.logprobs)

    # -- public generation ---------------------------------------------------------
    def complete(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
                 **overrides: Any) -> Completion:
        """Complete ``prompt`` (text or token ids); keyword overrides replace params fields.

        Raises ``ValueError`` for an empty or too-long prompt (unless truncate),
        :class:`ClosedError` after unload, :class:`GrammarError` for a bad grammar
        or schema.
        """
        p = self._params(params, overrides)
        seq = None
        for _, seq in self._run_one(prompt, p):
            pass
        assert seq is not None
        return self._completion(seq)

    def stream(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
               **overrides: Any) -> Iterator[str]:
        """Yield text deltas as they are generated (never a split UTF-8 character).

        Breaking out of the loop stops generation at once; the LLM stays usable.
        """
        p = self._params(params, overrides)
        gen = self._run_one(prompt, p)
        try:
            for delta, _ in gen:
                if delta:
                    yield delta
        finally:
            gen.close()

    def chat_prompt(self, messages: Messages, add_generation_prompt: bool = True,
                    tools: Sequence[Any] | None = None) -> str:
        """The prompt text ``messages`` render to (see :mod:`cortex_llama.chat`).

        Raises ``ValueError`` for malformed messages and :class:`TemplateError`
        for an unknown or failing template.
        """
        model = self._require()
        msgs = chat_templates.check_messages(messages)
        vocab = model.vocab
        bos = vocab.text(vocab.bos) if vocab.bos is not None else ""
        eos = vocab.text(vocab.eos) if vocab.eos is not None else ""
        named = self.config.chat_template
        if named is not None:
            return chat_templates.render(named, msgs, add_generation_prompt, bos, eos, tools)
        tmpl = model.chat_template()
        if tmpl is None:
            return chat_templates.render_jinja(chat_templates.CHATML, msgs, add_generation_prompt,
                                               bos, eos, tools) \
                if _have_jinja() else chat_templates.apply_builtin("chatml", msgs, add_generation_prompt)
        return chat_templates.render(tmpl, msgs, add_generation_prompt, bos, eos, tools)

    def chat_tokens(self, messages: Messages, tools: Sequence[Any] | None = None) -> list[int]:
        """The tokens of :meth:`chat_prompt`; BOS is added only when the template
        did not write it already."""
        model = self._require()
        text = self.chat_prompt(messages, tools=tools)
        bos = model.vocab.bos
        has_bos = bos is not None and text.startswith(model.vocab.text(bos))
        return model.tokenize(text, add_special=not has_bos, parse_special=True).tolist()

    def chat(self, messages: Messages, params: GenerationParams | None = None, **overrides: Any) -> Completion:
        """Answer a conversation; returns the assistant's :class:`Completion`."""
        return self.complete(self.chat_tokens(messages), params, **overrides)

    def stream_chat(self, messages: Messages, params: GenerationParams | None = None,
                    **overrides: Any) -> Iterator[str]:
        return self.stream(self.chat_tokens(messages), params, **overrides)

    def generate(self, prompts: Sequence[str | Sequence[int]], params: GenerationParams | None = None,
                 **overrides: Any) -> list[Completion]:
        """Complete many prompts in parallel: one sequence each, one decode per step.

        Up to ``ModelConfig.n_seq_max`` prompts run at once (more go in waves).
        Each has its own sampler (seeded ``seed + i`` when a seed is given), stop
        state and finish reason. Greedy results equal completing each alone.
        """
        p = self._params(params, overrides)
        if isinstance(prompts, (str, bytes)):
            raise TypeError("generate() takes a list of prompts; use complete() for one")
        out: list[Completion] = []
        n_par = self.config.n_seq_max
        for w in range(0, len(prompts), n_par):
            out.extend(self._generate_wave(list(prompts[w: w + n_par]), p, w))
        return out

    def _generate_wave(self, prompts: list[Any], p: GenerationParams, offset: int) -> list[Completion]:
        with self._exclusive():
            ctx, batch = self.context, self._batch
            assert batch is not None
            toks = [self._prompt_tokens(pr, p) for pr in prompts]
            seqs = [_Sequence(self, p if p.seed is None else replace(p, seed=(p.seed + offset + i) % 2**32),
                              i, t) for i, t in enumerate(toks)]
            t0 = time.perf_counter()
            ctx.clear()
            self._cache = []
            # 1. every prompt but its last token, packed into as few batches as fit
            batch.clear()
            for s, t in zip(seqs, toks):
                a = 0
                while a < len(t) - 1:
                    room = batch.capacity - batch.n_tokens
                    if room == 0:
                        ctx.decode(batch)
                        batch.clear()
                        continue
                    chunk = t[a: min(len(t) - 1, a + room)]
                    batch.add_many(chunk, a, s.seq_id, logits=False)
                    a += len(chunk)
            if batch.n_tokens:
                ctx.decode(batch)
            # 2. the last token of every prompt together: all logits are fresh
            batch.clear()
            for row, (s, t) in enumerate(zip(seqs, toks)):
                batch.add(t[-1], len(t) - 1, s.seq_id, logits=True)
                s.row = row
            ctx.decode(batch)
            t1 = time.perf_counter()
            # 3. one decode per step for all live sequences
            try:
                while True:
                    live = [s for s in seqs if s.finish is None]
                    for s in live:
                        s.step(ctx)
                        if s.finish is None and s.pos >= ctx.n_ctx:
                            s.finish = FINISH_LENGTH
                    live = [s for s in live if s.finish is None]
                    if not live:
                        break
                    batch.clear()
                    for row, s in enumerate(live):
                        batch.add(s.tokens[-1], s.pos, s.seq_id, logits=True)
                        s.pos += 1
                        s.row = row
                    ctx.decode(batch)
            finally:
                ctx.clear()
            t2 = time.perf_counter()
            for s in seqs:
                s.t_prompt, s.t_gen = t1 - t0, t2 - t1
            return [self._completion(s) for s in seqs]

    # -- embeddings ------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], *, pooling: str | None = None,
              normalize: bool = True) -> np.ndarray:
        """Embed one text (shape ``(n_embd,)``) or many (``(n, n_embd)``).

        Many texts go into one batch as separate sequences. ``pooling`` is the
        model's by default (mean when it has none); ``normalize`` scales to unit
        length. Raises ``ValueError`` for an empty text or one longer than the
        context.
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            raise ValueError("no texts to embed")
        with self._exclusive():
            model = self._require()
            pooling = pooling or self.config.pooling or "mean"
            ctx = self._embedding_context(pooling)
            toks = []
            for i, t in enumerate(items):
                if not isinstance(t, str) or not t:
                    raise ValueError(f"texts[{i}] must be a non-empty string")
                tk = model.tokenize(t)
                if len(tk) > ctx.n_batch:
                    raise ValueError(f"texts[{i}] has {len(tk)} tokens, more than the batch size "
                                     f"{ctx.n_batch} (ModelConfig.batch_size)")
                toks.append(tk)
            out = np.empty((len(items), model.n_embd), dtype=np.float32)
            batch = Batch(ctx.n_batch, ctx.n_seq_max, n_vocab=model.n_vocab)
            i = 0
            while i < len(items):
                batch.clear()
                ctx.clear()
                members = []
                while i < len(items) and len(members) < ctx.n_seq_max and \
                        batch.n_tokens + len(toks[i]) <= batch.capacity:
                    batch.add_many(toks[i], 0, len(members), logits=True)
                    members.append(i)
                    i += 1
                ctx.decode(batch)
                for s, idx in enumerate(members):
                    out[idx] = ctx.seq_embeddings(s)
            if normalize:
                norms = np.linalg.norm(out, axis=1, keepdims=True)
                out /= np.where(norms == 0, 1, norms)
            return out[0] if single else out

    def _embedding_context(self, pooling: str) -> Context:
        if not self.config.embeddings:
            raise LlamaError("embeddings are disabled (ModelConfig.embeddings=False)")
        ctx = self._embed_ctx
        if ctx is None or ctx.closed or ctx.pooling != pooling:
            if ctx is not None:
                ctx.close()
            c = self.config
            ctx = Context(self._require(), n_ctx=c.batch_size * c.n_seq_max, n_batch=c.batch_size,
                          n_ubatch=c.batch_size, n_seq_max=c.n_seq_max, n_threads=c.threads,
                          n_threads_batch=c.threads_batch, embeddings=True, pooling=pooling,
                          kv_unified=True)
            self._embed_ctx = ctx
        return ctx

    # -- asyncio -----------------------------------------------------------------
    async def acomplete(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
                        **overrides: Any) -> Completion:
        """:meth:`complete` in a worker thread (calls on one LLM are serialized)."""
        return await asyncio.to_thread(self.complete, prompt, params, **overrides)

    async def achat(self, messages: Messages, params: GenerationParams | None = None,
                    **overrides: Any) -> Completion:
        return await asyncio.to_thread(self.chat, messages, params, **overrides)

    async def aembed(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts, **kwargs)

    async def agenerate(self, prompts: Sequence[str | Sequence[int]], params: GenerationParams | None = None,
                        **overrides: Any) -> list[Completion]:
        return await asyncio.to_thread(self.generate, prompts, params, **overrides)

    async def astream(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
                      **overrides: Any) -> AsyncIterator[str]:
        """:meth:`stream` for asyncio: decoding runs in a worker thread, deltas
        arrive through a queue, and leaving the loop early stops generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for delta in self.stream(prompt, params, **overrides):
                    loop.call_soon_threadsafe(queue.put_nowait, delta)
                    if stop.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            await worker

    async def astream_chat(self, messages: Messages, params: GenerationParams | None = None,
                           **overrides: Any) -> AsyncIterator[str]:
        async for delta in self.astream(self.chat_tokens(messages), params, **overrides):
            yield delta


_Config = TypeVar("_Config", ModelConfig, GenerationParams)


def _with_overrides(obj: _Config, overrides: Mapping[str, Any]) -> _Config:
    """A copy of a config dataclass with some fields replaced (and validated again).

    Raises ``TypeError`` naming unknown fields.
    """
    if not overrides:
        return obj
    unknown = set(overrides) - {f.name for f in fields(obj)}
    if unknown:
        raise TypeError(f"unknown {type(obj).__name__} fields: {sorted(unknown)}")
    return replace(obj, **overrides)


def _have_jinja() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True

