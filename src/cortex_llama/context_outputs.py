"""What a :class:`Context`'s decode outputs: each requested entry's logits or
embedding, and the pooled embedding (or rank scores) of each sequence."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _lib
from ._lib import ffi, lib
from .context_base import ContextBase
from .context_params import POOLING_TYPES

__all__ = ["ContextOutputs"]


class ContextOutputs(ContextBase):
    """The output methods of a :class:`~cortex_llama.context.Context` (a base class
    of it; see :class:`ContextBase`)."""

    def _row(self, getter: Any, i: int, width: int, what: str) -> np.ndarray:
        ptr = self.handle
        row = getter(ptr, int(i))
        if row == ffi.NULL:
            _lib.take_log_problems()
            raise IndexError(f"no {what} for output {i}: request them with logits=True in the batch")
        return np.frombuffer(ffi.buffer(row, width * 4), dtype=np.float32)

    def logits(self, i: int = -1) -> np.ndarray:
        """Zero-copy float32 view of the logits of batch entry ``i`` (-1: the last output).

        The view points into llama.cpp's output buffer: it is valid only until
        the next ``decode``/``encode`` (or close), which overwrites or frees it.
        Use :meth:`logits_copy` to keep the values. Raises ``IndexError`` when
        entry ``i`` did not request logits.
        """
        return self._row(lib.llama_get_logits_ith, i, self.n_vocab, "logits")

    def logits_copy(self, i: int = -1) -> np.ndarray:
        """Like :meth:`logits`, but an independent copy that stays valid."""
        return self.logits(i).copy()

    def all_logits(self) -> np.ndarray:
        """``(n_outputs, n_vocab)`` zero-copy view of every output's logits (valid until
        the next decode)."""
        ptr = self.handle
        raw = lib.llama_get_logits(ptr)
        if raw == ffi.NULL or self.n_outputs == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        n = self.n_outputs
        return np.frombuffer(ffi.buffer(raw, n * self.n_vocab * 4),
                             dtype=np.float32).reshape(n, self.n_vocab)

    def embeddings(self, i: int = -1) -> np.ndarray:
        """Copy of the embedding of batch entry ``i`` (context made with embeddings=True)."""
        return self._row(lib.llama_get_embeddings_ith, i, self.n_embd, "embeddings").copy()

    def seq_embeddings(self, seq_id: int) -> np.ndarray:
        """Copy of the pooled embedding of sequence ``seq_id`` (pooling other than
        none); with rank pooling, its ``n_cls_out`` scores."""
        ptr = self.handle
        self.check_seq(seq_id)
        row = lib.llama_get_embeddings_seq(ptr, seq_id)
        if row == ffi.NULL:
            raise IndexError(f"no pooled embedding for sequence {seq_id} (pooling is "
                             f"{self.pooling!r}; embeddings={self.embeddings_enabled})")
        width = self.model.n_cls_out if self.pooling == "rank" else self.n_embd
        return np.frombuffer(ffi.buffer(row, width * 4), dtype=np.float32).copy()

    @property
    def pooling(self) -> str | None:
        code = lib.llama_pooling_type(self.handle)
        return next((k for k, v in POOLING_TYPES.items() if v == code), None)
