"""Inference contexts: :class:`Context`, made here and decoding here; its outputs
(logits, embeddings), KV-cache memory, state, LoRA and perf/warm-up methods come
from base classes in :mod:`.context_outputs`, :mod:`.context_memory`,
:mod:`.context_state`, :mod:`.lora` and :mod:`.context_perf`."""

from __future__ import annotations

import threading
from typing import Any

from . import _lib
from ._base import Owned
from ._lib import ffi, lib
from .abort import DecodeAbort
from .batch import Batch
from .context_memory import KVMemory
from .context_outputs import ContextOutputs
from .context_perf import ContextPerf
from .context_params import (ATTENTION_TYPES, FLASH_ATTN_TYPES, GGML_TYPES, POOLING_TYPES, ROPE_SCALING_TYPES,
                             context_params)
from .context_state import ContextState
from .errors import ContextError, raise_for_decode
from .lora import ContextLoras, LoraAdapter
from .model import Model, _why
from .threadpool import CpuThreadpools

__all__ = ["Context", "LoraAdapter", "POOLING_TYPES", "ATTENTION_TYPES", "ROPE_SCALING_TYPES",
           "FLASH_ATTN_TYPES", "GGML_TYPES"]

# Batches at least this big, decoded on the main thread, check for Ctrl-C through
# a Python abort callback (its per-graph-node cost is negligible next to theirs).
# Smaller ones use the C-level flag, and Ctrl-C lands right after they return.
INTERRUPT_CHECK_MIN_TOKENS = 32


class Context(ContextOutputs, KVMemory, ContextState, ContextLoras, ContextPerf, Owned):
    """A llama.cpp context over a :class:`Model`: the KV cache and the compute state.

    Keyword arguments mirror ``llama_context_params``; ``None`` keeps llama.cpp's
    default. The context keeps its model alive; closing the model closes the
    context first. Every method takes the context's lock, so two threads sharing
    one context are serialized rather than corrupting it (decoding releases the
    GIL, so other Python threads keep running meanwhile).

    ``poll`` (0-100, default 50) gives the context its own CPU threadpools whose
    workers spin briefly for work, as llama.cpp's tools do; ``poll=None`` leaves
    threading to ggml's OpenMP path.

    Embedding contexts with pooling and several sequences default to a unified
    KV cache (``kv_unified=True``): with per-sequence streams, this llama.cpp
    returns wrong pooled embeddings for every sequence after the first.

    Raises :class:`ContextError` when llama.cpp cannot create the context and
    ``ValueError`` for invalid parameters.
    """

    _kind = "context"

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int | None = None,
        n_batch: int | None = None,
        n_ubatch: int | None = None,
        n_seq_max: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        embeddings: bool = False,
        pooling: str | None = None,
        attention: str | None = None,
        flash_attn: bool | str | None = None,
        type_k: str | None = None,
        type_v: str | None = None,
        offload_kqv: bool | None = None,
        kv_unified: bool | None = None,
        swa_full: bool | None = None,
        rope_scaling: str | None = None,
        rope_freq_base: float | None = None,
        rope_freq_scale: float | None = None,
        yarn_orig_ctx: int | None = None,
        no_perf: bool = False,
        poll: int | None = 50,
    ) -> None:
        mptr = model._check()
        self.model = model
        p = context_params(model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=n_seq_max,
                           n_threads=n_threads, n_threads_batch=n_threads_batch, embeddings=embeddings,
                           pooling=pooling, attention=attention, flash_attn=flash_attn, type_k=type_k,
                           type_v=type_v, offload_kqv=offload_kqv, kv_unified=kv_unified, swa_full=swa_full,
                           rope_scaling=rope_scaling, rope_freq_base=rope_freq_base,
                           rope_freq_scale=rope_freq_scale, yarn_orig_ctx=yarn_orig_ctx, no_perf=no_perf)
        self._abort = DecodeAbort()
        self._abort.set_params(p)

        if poll is not None and not 0 <= int(poll) <= 100:
            raise ValueError(f"poll must be in [0, 100] or None, got {poll}")
        ptr = self._create(model, mptr, p, None if poll is None else int(poll))
        model._adopt(self)
        self._lock = threading.RLock()
        self._mem = lib.llama_get_memory(ptr)
        self._n_ctx = int(lib.llama_n_ctx(ptr))
        self._n_batch = int(lib.llama_n_batch(ptr))
        self._n_seq_max = int(lib.llama_n_seq_max(ptr))
        self._n_ctx_seq = int(lib.llama_n_ctx_seq(ptr))
        self._kv_unified = bool(p.kv_unified)
        self._n_vocab = model.vocab.n_tokens
        self._n_embd = model.n_embd
        self._n_outputs = 0
        self._embeddings = bool(embeddings)
        # a one-token batch for decode_one(): one output, one sequence
        self._one = Batch(1, 1)
        self._one.set_single(0, 0, 0)
        self._one_c = self._one.as_c()

    def _create(self, model: Model, mptr: Any, p: Any, poll: int | None) -> Any:
        """Create the ``llama_context`` from the params ``p`` and own it, with its CPU
        threadpools; returns it. Raises :class:`ContextError` when llama.cpp cannot."""
        _lib.take_log_problems()
        ptr = lib.llama_init_from_model(mptr, p)
        if ptr == ffi.NULL:
            raise ContextError(_why(f"llama.cpp could not create a context for {model.path.name} "
                                    f"(n_ctx={p.n_ctx}, n_batch={p.n_batch})"))
        # CPU threadpools owned by this context, freed right after it
        pools = self._pools = CpuThreadpools(poll)

        def free_context(cptr: Any) -> None:
            lib.llama_free(cptr)
            pools.free()

        self._own(ptr, free_context)
        pools.attach(ptr, p.n_threads, p.n_threads_batch)
        return ptr

    def __repr__(self) -> str:
        if self.closed:
            return "<Context closed>"
        return f"<Context n_ctx={self._n_ctx} n_batch={self._n_batch} n_seq_max={self._n_seq_max}>"

    def _release(self, ptr: Any) -> None:
        self._mem = None
        super()._release(ptr)

    # -- sizes ------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        self._check()
        return self._n_ctx

    @property
    def n_ctx_seq(self) -> int:
        """KV cells one sequence may use: ``n_ctx`` with a unified cache, else its
        stream's share (``n_ctx / n_seq_max``, padded by llama.cpp)."""
        self._check()
        return self._n_ctx_seq

    @property
    def per_slot_streams(self) -> bool:
        """True when each sequence has a KV stream of its own (``kv_unified=False``)
        and more than one sequence exists."""
        return not self._kv_unified and self._n_seq_max > 1

    @property
    def n_batch(self) -> int:
        self._check()
        return self._n_batch

    @property
    def n_ubatch(self) -> int:
        return int(lib.llama_n_ubatch(self._check()))

    @property
    def n_seq_max(self) -> int:
        self._check()
        return self._n_seq_max

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_threads(self) -> int:
        return int(lib.llama_n_threads(self._check()))

    @property
    def n_threads_batch(self) -> int:
        return int(lib.llama_n_threads_batch(self._check()))

    def set_n_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        """Change the thread counts for generation and for batch (prompt) processing."""
        if n_threads < 1 or (n_threads_batch is not None and n_threads_batch < 1):
            raise ValueError("thread counts must be >= 1")
        nb = n_threads if n_threads_batch is None else n_threads_batch
        with self._lock:
            ptr = self._check()
            lib.llama_set_n_threads(ptr, n_threads, nb)
            self._pools.attach(ptr, n_threads, nb)

    @property
    def lock(self) -> Any:
        """The context's re-entrant lock: hold it around C calls that read the
        context's outputs through :attr:`handle` (e.g. a sampler)."""
        return self._lock

    @property
    def handle(self) -> Any:
        """The raw ``llama_context *``; raises :class:`ClosedError` when closed."""
        return self._check()

    def new_batch(self, capacity: int | None = None, n_seq_max: int | None = None) -> Batch:
        """A token :class:`Batch` sized for this context (defaults: n_batch, n_seq_max)."""
        self._check()
        return Batch(capacity or self._n_batch, n_seq_max or self._n_seq_max, n_vocab=self._n_vocab)

    # -- decoding ---------------------------------------------------------------------
    def abort(self) -> None:
        """Ask the running decode (or, if none runs, the next one) to stop; it raises
        :class:`AbortedError`. One request stops one decode.

        Safe to call from any thread; costs the decoding thread nothing.
        """
        self._abort.request()

    def _run(self, fn: Any, batch: Batch, what: str) -> None:
        ptr = self._check()
        n = batch.n_tokens
        if n == 0:
            raise ValueError(f"{what}: the batch is empty")
        if n > self._n_batch:
            raise ValueError(f"{what}: batch of {n} tokens exceeds the context's n_batch={self._n_batch}")
        if batch.needs_validation:
            batch.validate(self._n_vocab, self._n_seq_max)
        if batch.max_token >= self._n_vocab:
            raise ValueError(f"token id {batch.max_token} is outside the vocabulary [0, {self._n_vocab})")
        if batch.max_seq_id >= self._n_seq_max:
            raise ValueError(f"sequence id {batch.max_seq_id} is outside [0, {self._n_seq_max}) "
                             "(the context's n_seq_max)")
        if batch.embd and batch.embd != self._n_embd:
            raise ValueError(f"embedding batch width {batch.embd} != model n_embd {self._n_embd}")
        interruptible = (n >= INTERRUPT_CHECK_MIN_TOKENS
                         and threading.current_thread() is threading.main_thread())
        self._call(fn, ptr, batch.as_c(), n, batch.n_outputs, what, interruptible)

    def _call(self, fn: Any, ptr: Any, cbatch: Any, n: int, n_outputs: int, what: str,
              interruptible: bool = False) -> None:
        """Run ``fn(ptr, cbatch)`` under the lock and raise for its return code."""
        with self._lock:
            rc = self._abort.run(fn, ptr, cbatch, interruptible)
            self._n_outputs = n_outputs if rc == 0 else 0
        if interruptible:
            self._abort.reraise()  # e.g. a KeyboardInterrupt caught by the abort check
        if rc != 0:
            raise_for_decode(rc, what, n, self._n_ctx, _lib.take_log_problems())

    def decode(self, batch: Batch) -> None:
        """Run the model over ``batch`` (``llama_decode``).

        Raises ``ValueError`` (before C sees anything) for an empty or oversized
        batch, token ids outside the vocabulary, or sequence ids >= n_seq_max;
        :class:`KVCacheFullError` when the KV cache has no room (the context stays
        usable); :class:`AbortedError` after :meth:`abort`; ``KeyboardInterrupt``
        when Ctrl-C aborted a long decode; :class:`InvalidBatchError` or
        :class:`FatalDecodeError` for other failures.
        """
        self._run(lib.llama_decode, batch, "llama_decode")

    def decode_one(self, token: int, pos: int, seq_id: int = 0) -> None:
        """Decode one token at ``pos`` of ``seq_id`` with its logits requested: the
        fast path of a generation loop (read them with ``logits(0)`` or ``-1``).

        Raises like :meth:`decode`: ``ValueError`` for a token outside the
        vocabulary, a negative position or a bad sequence id, and the
        :class:`DecodeError` classes for llama.cpp's return codes.
        """
        ptr = self._check()
        if not 0 <= token < self._n_vocab:
            raise ValueError(f"token id {token} is outside the vocabulary [0, {self._n_vocab})")
        if pos < 0:
            raise ValueError(f"position {pos} is negative")
        if not 0 <= seq_id < self._n_seq_max:
            raise ValueError(f"sequence id {seq_id} is outside [0, {self._n_seq_max}) (n_seq_max)")
        self._one.set_single(token, pos, seq_id)
        self._call(lib.llama_decode, ptr, self._one_c, 1, 1, "llama_decode")

    def encode(self, batch: Batch) -> None:
        """Run the encoder over ``batch`` (``llama_encode``); raises like :meth:`decode`."""
        self._run(lib.llama_encode, batch, "llama_encode")

    # -- outputs (see context_outputs.ContextOutputs) ---------------------------------
    @property
    def n_embd(self) -> int:
        """The width of an embedding row (the model's ``n_embd``)."""
        return self._n_embd

    @property
    def n_outputs(self) -> int:
        """The output rows (logits or embeddings) of the last decode; 0 after a failed one."""
        return self._n_outputs

    @property
    def embeddings_enabled(self) -> bool:
        """Whether decodes output embeddings (``embeddings=True`` or :meth:`set_embeddings`)."""
        return self._embeddings

    def set_embeddings(self, on: bool) -> None:
        with self._lock:
            lib.llama_set_embeddings(self._check(), bool(on))
            self._embeddings = bool(on)

    def set_causal_attn(self, on: bool) -> None:
        with self._lock:
            lib.llama_set_causal_attn(self._check(), bool(on))

    # -- KV memory (see context_memory.KVMemory) ----------------------------------------
    def check_seq(self, seq_id: int, allow_all: bool = False) -> int:
        """``seq_id`` as an int; raises ``ValueError`` unless it is in ``[0, n_seq_max)``
        (or is -1, every sequence, with ``allow_all``)."""
        if allow_all and seq_id == -1:
            return -1
        if not 0 <= seq_id < self._n_seq_max:
            raise ValueError(f"sequence id {seq_id} is outside [0, {self._n_seq_max}) (n_seq_max)")
        return int(seq_id)

    @property
    def memory_handle(self) -> Any:
        """The raw ``llama_memory_t`` of the KV cache; raises :class:`ClosedError` when closed."""
        self._check()
        return self._mem
