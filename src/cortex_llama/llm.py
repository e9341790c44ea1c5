"""The high-level API: ``LLM`` with ``ModelConfig`` and ``GenerationParams``.

``LLM`` is a facade over the generation engine (:mod:`cortex_llama.gen`): it
loads the model, tokenizes and renders chat prompts, and turns every call into
one or more :class:`Request` submissions that it waits for.

Concurrency: one background engine thread owns the context and runs
**continuous batching**. Every concurrent call (threads calling
:meth:`LLM.complete` / :meth:`LLM.stream`, asyncio tasks awaiting
:meth:`LLM.acomplete` / iterating :meth:`LLM.astream`) becomes a request that
shares each ``llama_decode`` with the others: the next token of every running
request plus chunks of prompts being prefilled, up to ``n_batch`` tokens per
step. Up to ``ModelConfig.n_seq_max`` requests run at once; more wait in a FIFO
queue (bounded by ``ModelConfig.max_queue``). Greedy output is the same as
running each request alone.

``ModelConfig.context_size`` is the context of one request. By default each
slot has a KV stream of that size (llama.cpp's ``kv_unified=false``); with
``kv_unified=True`` the slots share one cache of ``context_size`` cells and,
under KV pressure, the youngest running request is preempted (re-queued and
resumed later, its output unchanged); see :mod:`cortex_llama.gen.scheduler`.

Sync calls block on a thread-safe future (fine inside a running event loop,
though that blocks the loop); async calls never use a thread per request.
Embeddings (:meth:`LLM.embed`) use their own context and are serialized.

``LLM`` itself loads and unloads; its completion, chat and embedding methods
come from :class:`~.llm_complete.CompletionMethods`,
:class:`~.llm_chat.ChatMethods` and :class:`~.llm_embed.EmbeddingMethods`
(the first two build their requests with the
:class:`~.llm_requests.RequestBuilder` that :attr:`LLM.requests` gives).
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import registry
from .chat import ChatTemplates
from .context import Context
from .embed import Embedder
from .errors import ClosedError, QueueFullError
from .gen.engine import Engine
from .llm_chat import ChatMethods
from .llm_complete import CompletionMethods
from .llm_embed import EmbeddingMethods
from .llm_requests import RequestBuilder
from .gen.params import (FINISH_CANCELLED, FINISH_EOG, FINISH_LENGTH, FINISH_STOP, Completion,
                         GenerationParams, ModelConfig, Timings, TokenLogprob, Usage, with_overrides)
from .gen.output import log_softmax_norm, top_logprobs
from .gen.request import Request
from .gen.lora import LoraInfo, LoraSet
from .gen.slot_files import Slots
from .gen.speculation import Speculation
from .gen.streams import AsyncTextStream, TextStream
from .model import Model
from .multimodal import Projector
from .speculative import Drafter

__all__ = ["LLM", "ModelConfig", "GenerationParams", "Completion", "Usage", "Timings",
           "TokenLogprob", "Request", "TextStream", "AsyncTextStream", "QueueFullError",
           "FINISH_STOP", "FINISH_LENGTH", "FINISH_EOG", "FINISH_CANCELLED",
           "log_softmax_norm", "top_logprobs"]

# old private names, kept importable
_with_overrides = with_overrides

Messages = Sequence[Mapping[str, Any]]


class LLM(CompletionMethods, ChatMethods, EmbeddingMethods):
    """A loaded model served by a continuous-batching engine: complete, stream,
    chat, generate (sync and async), embed, tokenize.

    ``LLM(config_or_path, **overrides)``: overrides replace ``ModelConfig``
    fields (``LLM("m.gguf", context_size=2048, threads=8)``). The model loads
    at once unless ``load=False``. Works as a context manager; after
    :meth:`unload` every call raises :class:`ClosedError` until :meth:`load`.
    """

    def __init__(self, config: ModelConfig | str | os.PathLike[str], *, load: bool = True,
                 progress: Callable[[float], bool | None] | None = None, **overrides: Any) -> None:
        if not isinstance(config, ModelConfig):
            config = ModelConfig(model_path=config)
        self.config = with_overrides(config, overrides)
        self._life = threading.RLock()  # load/unload
        self._model: Model | None = None
        self._draft_model: Model | None = None  # speculative decoding's draft model, when configured
        self._ctx: Context | None = None
        self._engine: Engine | None = None
        self._projector: Projector | None = None
        self._embedder: Embedder | None = None
        self._loras: LoraSet | None = None
        self._templates: ChatTemplates | None = None
        self._n_ctx = 0
        self._eog_cache: dict[int, bool] = {}
        self._stats: dict[str, int] = {"prompt_tokens_evaluated": 0, "prompt_tokens_reused": 0}
        self._progress = progress
        self._finalizer: weakref.finalize | None = None
        if load:
            self.load()

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, *, revision: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None,
                        hub_options: Mapping[str, Any] | None = None, **overrides: Any) -> LLM:
        """An LLM on ``filename`` of the Hugging Face repository ``repo_id``, fetched
        (or found in the Hub's cache) by ``huggingface_hub``; ``overrides`` are
        ``ModelConfig`` fields, ``hub_options`` more arguments of ``hf_hub_download``
        (``token``, ``local_files_only``, ...).

        Raises :class:`RegistryError` without ``huggingface_hub``
        (``pip install 'cortex-llama[hf]'``) or when the file cannot be had, and
        what :class:`LLM` raises for the file.
        """
        path = registry.from_hub(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                 **dict(hub_options or {}))
        return cls(path, **overrides)

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
        if self._projector is not None:
            caps |= {"vision"} if self._projector.supports_vision else set()
            caps |= {"audio"} if self._projector.supports_audio else set()
        return frozenset(caps)

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _speculation(self, ctx: Context) -> Speculation | None:
        """The drafting stage ModelConfig.speculative asks for (None: off); a draft
        model gets a context shaped as ``ctx`` (slots, cells, batch, threads).
        Raises :class:`SpeculationError` for a bad n-gram setting or a draft model
        whose vocabulary differs, :class:`ModelLoadError` for its file."""
        c = self.config
        types = c.speculative_types
        if not types:
            return None
        draft_ctx: Context | None = None
        if c.draft_model is not None:
            layers = c.gpu_layers if c.draft_gpu_layers is None else c.draft_gpu_layers
            draft = Model(c.draft_model, n_gpu_layers=layers, use_mmap=c.use_mmap, devices=c.devices,
                          use_extra_bufts=c.resolved_extra_bufts, no_host=c.no_host)
            self._draft_model = draft
            draft_ctx = Context(draft, n_ctx=ctx.n_ctx, n_batch=c.batch_size, n_ubatch=c.ubatch_size,
                                n_seq_max=ctx.n_seq_max, n_threads=c.threads, n_threads_batch=c.threads_batch,
                                flash_attn=c.resolved_flash_attn, kv_unified=c.kv_unified)
        drafter = Drafter(types, ctx.n_seq_max, size_n=c.ngram_size_n, size_m=c.ngram_size_m,
                          draft=draft_ctx, target=ctx if draft_ctx is not None else None,
                          draft_max=c.draft_max, draft_p_min=c.draft_p_min)
        return Speculation(drafter, ctx.n_ctx_seq, n_max=c.draft_max, n_min=c.draft_min,
                           adaptive=c.draft_adaptive, per_slot=not c.kv_unified)

    def load(self) -> LLM:
        """Load the model, create the context and start the engine thread (no-op
        when loaded).

        Raises :class:`ModelLoadError` / :class:`ContextError`, and ``ValueError``
        for rank pooling on a model without a ranking head.
        """
        with self._life:
            if self._model is not None:
                return self
            c = self.config
            model = Model(c.model_path, n_gpu_layers=c.gpu_layers, use_mmap=c.use_mmap,
                          use_mlock=c.use_mlock, kv_overrides=c.kv_overrides, progress=self._progress,
                          devices=c.devices, rpc_servers=c.rpc_servers,
                          use_extra_bufts=c.resolved_extra_bufts, no_host=c.no_host)
            # llama_context_default_params() everywhere but the sizes: flash attention
            # auto, and a KV stream per slot unless kv_unified (see ModelConfig)
            n_ctx = c.context_size if c.kv_unified else c.context_size * c.n_seq_max
            try:
                if c.embeddings and c.pooling == "rank" and not model.has_ranking_head:
                    raise ValueError(f"ModelConfig.pooling='rank' needs a reranking model: {model.path} has "
                                     f"no ranking head (its GGUF does not declare rank pooling)")
                ctx = Context(model, n_ctx=n_ctx, n_batch=c.batch_size, n_ubatch=c.ubatch_size,
                              n_seq_max=c.n_seq_max, n_threads=c.threads, n_threads_batch=c.threads_batch,
                              flash_attn=c.resolved_flash_attn, type_k=c.type_k, type_v=c.type_v,
                              kv_unified=c.kv_unified)
                projector = self._load_projector(model) if c.mmproj is not None else None
                loras = LoraSet(model, c.lora)
                cache = None if c.prompt_cache_mib is None else c.prompt_cache_mib * 2**20
                engine = Engine(ctx, max_queue=c.max_queue, projector=projector, loras=loras or None,
                                prompt_cache_bytes=cache, speculation=self._speculation(ctx),
                                slot_similarity=c.slot_prompt_similarity)
            except BaseException:
                self._close_draft_model()
                model.close()
                raise
            self._model, self._ctx, self._engine = model, ctx, engine
            self._projector = projector
            self._loras = loras
            self._n_ctx = engine.capacity  # cells one request may hold
            self._stats = engine.stats  # live counters (prompt_tokens_evaluated/reused, ...)
            if c.embeddings:
                self._embedder = Embedder(model, batch_size=c.batch_size, n_seq_max=c.n_seq_max,
                                          threads=c.threads, threads_batch=c.threads_batch,
                                          pooling=c.pooling, run_in=lambda fn: engine.call(fn).result())
            engine.start()
            if c.warmup:  # in the engine thread, as every computation (see Engine.call)
                draft_ctx = engine.speculation.drafter.draft_context if engine.speculation else None
                try:
                    engine.call(ctx.warmup).result()
                    if draft_ctx is not None:  # the draft model's first draft is timed: not its warm-up
                        engine.call(draft_ctx.warmup).result()
                except BaseException:
                    self.unload()
                    raise
            # an LLM dropped without close() (or alive at exit) stops its engine thread
            self._finalizer = weakref.finalize(self, engine.close)
            return self

    def unload(self) -> None:
        """Stop the engine (requests in flight end with :class:`ClosedError`) and
        free the model and its contexts. Idempotent."""
        with self._life:
            engine, embedder, model = self._engine, self._embedder, self._model
            self._engine = self._embedder = None
            self._model = self._ctx = None
            self._projector = None  # closed with its model
            self._templates = None  # closed with its model
            loras, self._loras = self._loras, None
            if engine is not None:
                if self._finalizer is not None:
                    self._finalizer.detach()
                engine.close()
            if embedder is not None:
                embedder.close()
            if loras is not None:
                loras.close()
            self._close_draft_model()
            if model is not None:
                model.close()  # closes the contexts too

    def _close_draft_model(self) -> None:
        draft, self._draft_model = self._draft_model, None
        if draft is not None:
            draft.close()  # its context and the drafter first

    close = unload

    def __enter__(self) -> LLM:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def __repr__(self) -> str:
        return f"<LLM {self.name!r} {'loaded' if self.is_loaded else 'unloaded'}>"

    def _require(self) -> Model:
        model = self._model
        if model is None:
            raise ClosedError(f"the model {self.name!r} is not loaded: call load() first")
        return model

    def _load_projector(self, model: Model) -> Projector:
        c = self.config
        assert c.mmproj is not None
        proj = Projector(model, c.mmproj, n_threads=c.threads, use_gpu=c.gpu_layers != 0)
        if proj.uses_mrope:
            proj.close()
            raise ValueError(f"the projector {c.mmproj} is for an M-RoPE model, whose media positions "
                             "the batching engine does not lay out yet")
        return proj

    @property
    def projector(self) -> Projector | None:
        """The multimodal :class:`Projector` (``ModelConfig.mmproj``), or None."""
        self._require()
        return self._projector

    def _require_engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise ClosedError(f"the model {self.name!r} is not loaded: call load() first")
        return engine

    @property
    def requests(self) -> RequestBuilder:
        """A :class:`RequestBuilder` over the loaded model: checked requests, not
        yet submitted (``llm.requests.engine.submit(req)`` queues one). Raises
        :class:`ClosedError` when unloaded."""
        engine = self._require_engine()
        model = self._require()
        assert self._loras is not None
        return RequestBuilder(model, engine, self._loras, self._projector, self.config, self._n_ctx,
                              self._eog_cache)

    @property
    def slots(self) -> Slots:
        """Save, restore and erase a slot's KV cache (llama-server's slot files):
        ``llm.slots.save(0, path)``, ``.restore(1, path)``, ``.erase(0)``; a
        request runs in a given slot with ``GenerationParams(slot=1)``. Raises
        :class:`ClosedError` when unloaded."""
        return Slots(self._require_engine())

    @property
    def model(self) -> Model:
        """The underlying :class:`Model` (object layer)."""
        return self._require()

    @property
    def context(self) -> Context:
        """The generation :class:`Context`. The engine thread decodes on it: read
        its sizes, do not decode on it yourself."""
        self._require()
        assert self._ctx is not None
        return self._ctx

    @property
    def stats(self) -> dict[str, int]:
        """Live engine counters, among them ``prompt_tokens_evaluated`` and
        ``prompt_tokens_reused`` (see :meth:`metrics` for all)."""
        return self._stats

    def metrics(self) -> dict[str, float]:
        """Counters and gauges of the engine: requests_total, requests_finished,
        requests_failed, requests_cancelled, requests_running, queue_depth,
        slots_busy, slots_total, prompt_tokens_total, prompt_tokens_reused,
        prompt_tokens_evaluated, generated_tokens_total, decodes_total,
        decode_tokens_total, batched_decodes_total (decodes serving >= 2
        requests), preemptions_total, prompt_us_total and generation_us_total
        (the requests' Timings summed, in microseconds), tokens_max (the longest
        prompt + output), decode_requests_total (the requests each decode
        served, summed), draft_tokens_total, draft_accepted_total and
        drafts_total (speculative decoding: tokens drafted, accepted, drafts
        verified), kv_cells_used, kv_cells_total.

        Raises :class:`ClosedError` when unloaded.
        """
        return self._require_engine().metrics()

    # -- tokens ------------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self._require().tokenize(text, add_special, parse_special).tolist()

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False) -> str:
        return self._require().detokenize(tokens, remove_special)

    def count_tokens(self, text: str, add_special: bool = True) -> int:
        return int(self._require().tokenize(text, add_special).size)

    # -- LoRA ------------------------------------------------------------------------
    @property
    def lora(self) -> list[LoraInfo]:
        """The LoRA adapters loaded with ``ModelConfig.lora`` with their default
        scales (a request's ``GenerationParams.lora`` overrides them by id)."""
        self._require()
        assert self._loras is not None
        return self._loras.info()

    def set_lora_scales(self, scales: Mapping[int, float]) -> None:
        """Change the default LoRA scales by adapter id for requests submitted from
        now on. Raises ``ValueError`` for an unknown id (any id without adapters)."""
        self._require()
        assert self._loras is not None
        self._loras.set_defaults(scales)

    # -- chat templates (the chat methods: llm_chat.ChatMethods) -----------------------
    def chat_templates(self) -> ChatTemplates:
        """The model's chat templates (``ModelConfig.chat_template`` overrides them),
        loaded by llama.cpp's chat layer once per load.

        Raises :class:`TemplateError` for a template that does not parse.
        """
        model = self._require()
        with self._life:
            if self._templates is None:
                self._templates = ChatTemplates(model, self.config.chat_template)
            return self._templates

    # -- embeddings (the methods: llm_embed.EmbeddingMethods) ----------------------------
    @property
    def embedder(self) -> Embedder | None:
        """The :class:`Embedder` of the embedding context (``ModelConfig(embeddings=True)``),
        or None when embeddings are disabled. Raises :class:`ClosedError` when unloaded."""
        self._require()
        return self._embedder
