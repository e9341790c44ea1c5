"""``llama_context_params`` from :class:`Context`'s keyword arguments, and the names
those arguments take (pooling, attention, RoPE scaling, flash attention, KV types)."""

from __future__ import annotations

from typing import Any, Mapping

from ._lib import lib
from .model import Model

__all__ = ["context_params", "POOLING_TYPES", "ATTENTION_TYPES", "ROPE_SCALING_TYPES",
           "FLASH_ATTN_TYPES", "GGML_TYPES"]

POOLING_TYPES = {
    None: lib.LLAMA_POOLING_TYPE_UNSPECIFIED, "none": lib.LLAMA_POOLING_TYPE_NONE,
    "mean": lib.LLAMA_POOLING_TYPE_MEAN, "cls": lib.LLAMA_POOLING_TYPE_CLS,
    "last": lib.LLAMA_POOLING_TYPE_LAST, "rank": lib.LLAMA_POOLING_TYPE_RANK,
}
ATTENTION_TYPES = {
    None: lib.LLAMA_ATTENTION_TYPE_UNSPECIFIED, "causal": lib.LLAMA_ATTENTION_TYPE_CAUSAL,
    "non-causal": lib.LLAMA_ATTENTION_TYPE_NON_CAUSAL,
}
ROPE_SCALING_TYPES = {
    None: lib.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED, "none": lib.LLAMA_ROPE_SCALING_TYPE_NONE,
    "linear": lib.LLAMA_ROPE_SCALING_TYPE_LINEAR, "yarn": lib.LLAMA_ROPE_SCALING_TYPE_YARN,
    "longrope": lib.LLAMA_ROPE_SCALING_TYPE_LONGROPE,
}
FLASH_ATTN_TYPES = {
    None: lib.LLAMA_FLASH_ATTN_TYPE_AUTO, "auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: lib.LLAMA_FLASH_ATTN_TYPE_ENABLED, False: lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
GGML_TYPES = {name[len("GGML_TYPE_"):].lower(): getattr(lib, name)
              for name in dir(lib) if name.startswith("GGML_TYPE_") and name != "GGML_TYPE_COUNT"}


def _choice(table: Mapping[Any, int], value: Any, field: str) -> int:
    try:
        return table[value]
    except (KeyError, TypeError):
        names = [k for k in table if k is not None]
        raise ValueError(f"{field} must be one of {names}, not {value!r}") from None


def context_params(
    model: Model, *, n_ctx: int | None, n_batch: int | None, n_ubatch: int | None, n_seq_max: int | None,
    n_threads: int | None, n_threads_batch: int | None, embeddings: bool, pooling: str | None,
    attention: str | None, flash_attn: bool | str | None, type_k: str | None, type_v: str | None,
    offload_kqv: bool | None, kv_unified: bool | None, swa_full: bool | None, rope_scaling: str | None,
    rope_freq_base: float | None, rope_freq_scale: float | None, yarn_orig_ctx: int | None, no_perf: bool,
) -> Any:
    """``llama_context_default_params()`` with the arguments given (``None`` keeps a
    default), for a context over ``model``; the arguments are :class:`Context`'s.

    Raises ``ValueError`` for a size or thread count out of range, a name not in
    its table, and rank pooling on a model without a ranking head.
    """
    p = lib.llama_context_default_params()
    _set_sizes(p, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=n_seq_max,
               yarn_orig_ctx=yarn_orig_ctx)
    _set_threads(p, n_threads, n_threads_batch)
    p.embeddings = bool(embeddings)
    p.pooling_type = _choice(POOLING_TYPES, pooling, "pooling")
    if pooling == "rank" and not model.has_ranking_head:
        # llama.cpp would pool the hidden state and call its first value a score
        raise ValueError(f"pooling='rank' needs a reranking model: {model.path} has no ranking head "
                         f"(its GGUF does not declare {model.architecture}.pooling_type rank)")
    p.attention_type = _choice(ATTENTION_TYPES, attention, "attention")
    p.flash_attn_type = _choice(FLASH_ATTN_TYPES, flash_attn, "flash_attn")
    p.rope_scaling_type = _choice(ROPE_SCALING_TYPES, rope_scaling, "rope_scaling")
    if type_k is not None:
        p.type_k = _choice(GGML_TYPES, type_k.lower(), "type_k")
    if type_v is not None:
        p.type_v = _choice(GGML_TYPES, type_v.lower(), "type_v")
    if rope_freq_base is not None:
        p.rope_freq_base = float(rope_freq_base)
    if rope_freq_scale is not None:
        p.rope_freq_scale = float(rope_freq_scale)
    if kv_unified is None and embeddings and pooling != "none" and (n_seq_max or 1) > 1:
        # With one KV stream per sequence, this llama.cpp pools every sequence
        # but the first wrongly (measured: mean-pooled seq 1 off by 0.5); a
        # unified cache pools them all right.
        kv_unified = True
    for field, flag in (("offload_kqv", offload_kqv), ("kv_unified", kv_unified),
                        ("swa_full", swa_full)):
        if flag is not None:
            setattr(p, field, bool(flag))
    p.no_perf = bool(no_perf)
    return p


def _set_sizes(p: Any, **sizes: int | None) -> None:
    """Set the sizes given: all >= 1 but ``n_ctx`` and ``yarn_orig_ctx`` (0: the model's)."""
    for field, value in sizes.items():
        if value is not None:
            if int(value) < 0 or (field != "n_ctx" and field != "yarn_orig_ctx" and int(value) < 1):
                raise ValueError(f"{field} must be positive, got {value}")
            setattr(p, field, int(value))
    n_seq_max = sizes["n_seq_max"]
    if n_seq_max is not None and n_seq_max > lib.llama_max_parallel_sequences():
        raise ValueError(f"n_seq_max={n_seq_max} exceeds llama.cpp's limit of "
                         f"{lib.llama_max_parallel_sequences()} sequences")


def _set_threads(p: Any, n_threads: int | None, n_threads_batch: int | None) -> None:
    """Set the thread counts (``n_threads_batch`` defaults to ``n_threads``)."""
    threads = n_threads if n_threads is not None else p.n_threads
    if int(threads) < 1:
        raise ValueError(f"n_threads must be >= 1, got {threads}")
    p.n_threads = int(threads)
    p.n_threads_batch = int(n_threads_batch if n_threads_batch is not None else threads)
    if p.n_threads_batch < 1:
        raise ValueError(f"n_threads_batch must be >= 1, got {n_threads_batch}")
