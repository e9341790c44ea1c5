"""Configuration and results of generation: ``ModelConfig``, ``GenerationParams``,
``Completion`` with its ``Usage`` and ``Timings``, ``TokenLogprob``, the finish
reasons, and :func:`with_overrides`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence, TypeVar, Union

from ..speculative import MODEL_TYPES, NGRAM_TYPES

__all__ = ["ModelConfig", "GenerationParams", "Completion", "Usage", "Timings", "TokenLogprob",
           "FINISH_STOP", "FINISH_LENGTH", "FINISH_EOG", "FINISH_CANCELLED", "with_overrides"]

FINISH_STOP = "stop"  # a stop string matched
FINISH_LENGTH = "length"  # max_tokens reached, or the context (KV budget) is full
FINISH_EOG = "end-of-generation"  # the model emitted an end-of-generation token
FINISH_CANCELLED = "cancelled"  # Request.cancel(), or its stream was closed early


@dataclass
class ModelConfig:
    """How to load a model and size its context (the design's ``ModelConfig``).

    ``context_size`` is the context of **one request** (prompt + generated
    tokens <= context_size, in KV cells). ``n_seq_max`` is the number of
    requests decoded together (slots). By default each slot has a KV stream of
    its own (``kv_unified=False``, llama.cpp's default): the KV cache holds
    ``context_size * n_seq_max`` cells (llama.cpp's ``n_ctx``), a request's
    attention covers its own cells only. ``kv_unified=True`` makes one
    cache of ``context_size`` cells that the slots share (less memory; one long
    request may use all of it, and under pressure the youngest request is
    preempted and resumed later). ``flash_attn=None`` is llama.cpp's "auto".
    ``deterministic=True`` makes greedy output independent of what runs beside
    a request or ran before it (batch-invariant kernels: flash attention off,
    no weight repacking; needs the KV stream per slot): identical to a solo run,
    token for token, at some cost in speed (see the README).
    ``max_queue`` bounds the requests waiting for a slot (``None``: unbounded;
    beyond it ``LLM.submit`` raises :class:`QueueFullError`).
    ``speculative="ngram"`` (or llama.cpp's n-gram type names) drafts up to
    ``draft_max`` tokens per step by lookup in each request's own prompt and
    output and verifies them in the step's one decode; output is the same as
    without it (see the README's speculative decoding section).
    ``draft_model=PATH`` (with ``speculative="draft"``, its default then) drafts
    with a smaller model that shares the vocabulary (llama.cpp's draft-simple);
    ``"ngram,draft"`` tries lookup first.

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
    n_seq_max: int = 4  # concurrent requests (slots) sharing every decode (llama-server's -np auto)
    kv_unified: bool = False  # one KV cache shared by the slots instead of a stream per slot
    embeddings: bool = True  # allow embed() (a second, embedding context, made on demand)
    pooling: str | None = None  # embed() pooling: None = the model's, or mean/cls/last
    flash_attn: bool | None = None  # None: llama.cpp's auto (on where the backend supports it)
    use_mmap: bool = True
    use_mlock: bool = False
    type_k: str | None = None
    type_v: str | None = None
    kv_overrides: Mapping[str, Any] | None = None
    chat_template: str | None = None  # a built-in name or a Jinja template
    devices: Sequence[str] | None = None  # offload device names (None: every local GPU)
    rpc_servers: Sequence[str] | None = None  # "host:port" of llama.cpp RPC servers
    max_queue: int | None = None  # requests waiting for a slot (None: unbounded)
    mmproj: Union[str, "os.PathLike[str]", None] = None  # multimodal projector GGUF (images/audio in)
    use_extra_bufts: bool | None = None  # CPU weight repacking and other extra buffer types (None: on)
    no_host: bool = False  # no pinned host buffers for offloaded weights
    deterministic: bool = False  # batch-invariant kernels: output independent of other requests
    #: LoRA adapter files loaded with the model, each a path (scale 1.0) or (path, scale);
    #: their ids are their positions. A request picks its own scales (GenerationParams.lora)
    lora: Sequence[Union[str, "os.PathLike[str]", tuple[Union[str, "os.PathLike[str]"], float]]] = ()
    #: host memory for prompts that left their slot (llama-server's --cache-ram: 8192 MiB;
    #: 0 off, None no limit), restored when a request starts the same way; per-slot streams only
    prompt_cache_mib: int | None = 8192
    #: a free slot is taken for its cached prefix when that prefix is more than this
    #: fraction of the prompt, else the least recently used one (llama-server's
    #: --slot-prompt-similarity: 0.1; 0: any shared prefix)
    slot_prompt_similarity: float = 0.1
    #: llama.cpp's warm-up run at load (its tools' default; --no-warmup turns it off)
    warmup: bool = True
    #: speculative decoding: "ngram" (llama.cpp's ngram-simple), any of llama.cpp's n-gram
    #: types ("ngram-map-k", "ngram-mod", ... comma-separated), "draft" (a draft model:
    #: llama.cpp's draft-simple), or None (off; "draft" when draft_model is set)
    speculative: str | None = None
    #: the draft model's GGUF (same vocabulary as the target), its GPU layers (None: gpu_layers)
    draft_model: Union[str, "os.PathLike[str]", None] = None
    draft_gpu_layers: int | None = None
    #: a draft model's draft ends at a token it gives less probability (llama.cpp's p_min: 0)
    draft_p_min: float = 0.0
    draft_max: int = 16  # the longest draft verified in one step
    draft_min: int = 0  # shorter drafts are not verified
    #: draft only as far as the measured cost of a row and the request's acceptance pay
    #: (False: every match up to draft_max, as llama-server)
    draft_adaptive: bool = True
    #: lookup n-gram and drafted m-gram lengths of the n-gram types (0: llama.cpp's defaults)
    ngram_size_n: int = 0
    ngram_size_m: int = 0

    def __post_init__(self) -> None:
        for name in ("context_size", "threads", "batch_size", "n_seq_max"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.slot_prompt_similarity <= 1.0:
            raise ValueError("ModelConfig.slot_prompt_similarity must be in [0, 1], "
                             f"got {self.slot_prompt_similarity}")
        if self.prompt_cache_mib is not None and self.prompt_cache_mib < 0:
            raise ValueError(f"ModelConfig.prompt_cache_mib must be >= 0 or None, got {self.prompt_cache_mib}")
        if self.n_seq_max > self.batch_size:
            raise ValueError(f"ModelConfig.n_seq_max ({self.n_seq_max}) must not exceed "
                             f"batch_size ({self.batch_size})")
        if self.gpu_layers < -1:
            raise ValueError(f"ModelConfig.gpu_layers must be >= -1 (-1: all), got {self.gpu_layers}")
        for name in ("threads_batch", "ubatch_size", "max_queue"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {v}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"ModelConfig.seed must be in [0, 2**32), got {self.seed}")
        if self.deterministic:
            self._check_deterministic()
        if self.speculative is not None or self.draft_model is not None:
            self._check_speculative()

    def _check_speculative(self) -> None:
        """Raises ``ValueError`` for draft sizes out of range, an unknown type, or
        a draft type without a draft model (and the other way round)."""
        if self.draft_max < 1 or not 0 <= self.draft_min <= self.draft_max:
            raise ValueError(f"ModelConfig: draft_max={self.draft_max}, draft_min={self.draft_min} "
                             "(needs draft_max >= 1 and 0 <= draft_min <= draft_max)")
        if not 0.0 <= self.draft_p_min <= 1.0:
            raise ValueError(f"ModelConfig.draft_p_min must be in [0, 1], got {self.draft_p_min}")
        if self.draft_gpu_layers is not None and self.draft_gpu_layers < -1:
            raise ValueError(f"ModelConfig.draft_gpu_layers must be >= -1 (-1: all), got {self.draft_gpu_layers}")
        types = self.speculative_types
        bad = [n for n in types if n not in NGRAM_TYPES + MODEL_TYPES]
        if bad:
            raise ValueError(f"ModelConfig.speculative={self.speculative!r}: unknown type {bad[0]!r} "
                             f"(known: ngram, draft, {', '.join(NGRAM_TYPES + MODEL_TYPES)})")
        uses_model = any(n in MODEL_TYPES for n in types)
        if uses_model and self.draft_model is None:
            raise ValueError(f"ModelConfig.speculative={self.speculative!r} drafts with a model: "
                             "set ModelConfig.draft_model to its GGUF")
        if self.draft_model is not None and not uses_model:
            raise ValueError(f"ModelConfig.draft_model={os.fspath(self.draft_model)!r} is set but "
                             f"speculative={self.speculative!r} does not use it (add 'draft')")

    @property
    def speculative_types(self) -> list[str]:
        """llama.cpp's type names for :attr:`speculative` ("ngram": ngram-simple,
        "draft": draft-simple; ["draft-simple"] when only draft_model is set)."""
        if self.speculative is None:
            return ["draft-simple"] if self.draft_model is not None else []
        aliases = {"ngram": "ngram-simple", "draft": "draft-simple"}
        return [aliases.get(n.strip(), n.strip()) for n in self.speculative.split(",") if n.strip()]

    def _check_deterministic(self) -> None:
        """The settings ``deterministic=True`` needs; raises ``ValueError`` naming
        the field that contradicts it (a constraint is never dropped silently)."""
        conflicts = [(self.flash_attn, "flash_attn=True", "the CPU flash-attention kernels "
                      "change their summation order with the number of rows and cells"),
                     (self.kv_unified, "kv_unified=True", "a unified cache puts other requests' "
                      "cells in every attention"),
                     (self.use_extra_bufts, "use_extra_bufts=True",
                      "repacked weights use a different kernel for 1-3 rows than for 4 or more")]
        for bad, field_, why in conflicts:
            if bad:
                raise ValueError(f"ModelConfig.deterministic=True cannot be honoured with {field_}: {why}")

    @property
    def resolved_flash_attn(self) -> bool | None:
        """What the context gets: off when deterministic, else as set (None: auto)."""
        return False if self.deterministic else self.flash_attn

    @property
    def resolved_extra_bufts(self) -> bool:
        """Whether weights may be repacked: not when deterministic, else as set (default on)."""
        return not self.deterministic if self.use_extra_bufts is None else self.use_extra_bufts


@dataclass
class GenerationParams:
    """How to generate (the design's ``GenerationParams``).

    ``temperature=0`` is greedy. ``stop`` strings end generation and are not
    returned. ``grammar`` (GBNF) or ``json_schema`` constrain the output.
    ``logprobs=N`` returns the top-N log probabilities of every generated token.
    ``speculative=False`` keeps this request out of speculative decoding.
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
    slot: int | None = None  # run in this slot (llama-server's id_slot; None: the best free one)
    #: LoRA scales by adapter id (ModelConfig.lora) for this request; ids not given keep the
    #: LLM's default scale (None: the defaults for all)
    lora: Mapping[int, float] | None = None
    #: Request.progress follows the prompt's prefill (llama-server's return_progress)
    return_progress: bool = False
    #: draft and verify when the LLM speculates (ModelConfig.speculative); False opts out
    speculative: bool = True

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
        if self.slot is not None and self.slot < 0:
            raise ValueError(f"GenerationParams.slot must be >= 0 or None, got {self.slot}")
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
    """Where a request's time went, in milliseconds."""

    prompt_ms: float = 0.0  # prefill: from admission to the prompt's last chunk decoded
    generation_ms: float = 0.0  # from the first sampled token to the end
    queue_ms: float = 0.0  # waiting for a slot and KV room
    first_token_ms: float = 0.0  # from submit to the first sampled token (TTFT)
    draft_n: int = 0  # tokens drafted by speculative decoding (llama-server's draft_n)
    draft_n_accepted: int = 0  # of those, accepted by the model


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


_Config = TypeVar("_Config", ModelConfig, GenerationParams)


def with_overrides(obj: _Config, overrides: Mapping[str, Any]) -> _Config:
    """A copy of a config dataclass with some fields replaced (and validated again).

    Raises ``TypeError`` naming unknown fields.
    """
    if not overrides:
        return obj
    unknown = set(overrides) - {f.name for f in fields(obj)}
    if unknown:
        raise TypeError(f"unknown {type(obj).__name__} fields: {sorted(unknown)}")
    return replace(obj, **overrides)
