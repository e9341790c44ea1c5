"""The CPU threadpools a :class:`Context` owns, as llama.cpp's tools give theirs."""

from __future__ import annotations

from typing import Any

from . import _lib
from ._lib import ffi, lib
from .errors import ContextError

__all__ = ["CpuThreadpools"]


class CpuThreadpools:
    """A context's CPU threadpools: one for generation and one for batches (the
    same pool when the thread counts agree).

    With ``poll`` > 0 the workers spin briefly between graph nodes and between
    decodes instead of sleeping, which is what makes per-token latency match
    llama-bench. ``poll=None`` leaves scheduling to ggml (OpenMP): :meth:`attach`
    then does nothing. The owner frees them with :meth:`free` right after the
    context they are attached to.
    """

    def __init__(self, poll: int | None) -> None:
        self.poll = poll
        self._pools: list[Any] = []

    def attach(self, ctx_ptr: Any, n_threads: int, n_threads_batch: int) -> None:
        """Attach new pools of these sizes to the ``llama_context *`` and free the
        old ones. Raises :class:`ContextError` when ggml cannot create a pool."""
        if self.poll is None:
            return
        new = _lib.cpu_proc("ggml_threadpool_new",
                            "struct ggml_threadpool *(*)(struct ggml_threadpool_params *)")
        if new is None:
            return
        pools: list[Any] = []
        for n in dict.fromkeys((n_threads, n_threads_batch)):
            tpp = ffi.new("struct ggml_threadpool_params *", lib.ggml_threadpool_params_default(n))
            tpp.poll = self.poll
            tp = new(tpp)
            if tp == ffi.NULL:
                _free_pools(pools)
                raise ContextError(f"could not create a CPU threadpool of {n} threads")
            pools.append(tp)
        lib.llama_attach_threadpool(ctx_ptr, pools[0], pools[-1])
        _free_pools(self._pools)  # the old ones, now detached
        self._pools[:] = pools

    def free(self) -> None:
        """Free the pools (once the context that uses them is freed)."""
        _free_pools(self._pools)


def _free_pools(pools: list[Any]) -> None:
    free = _lib.cpu_proc("ggml_threadpool_free", "void(*)(struct ggml_threadpool *)")
    for tp in pools:
        free(tp)
    pools.clear()
