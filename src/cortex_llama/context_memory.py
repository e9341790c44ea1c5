"""The KV cache of a :class:`Context`: clearing it, and removing, copying,
keeping and shifting a sequence's positions."""

from __future__ import annotations

from ._lib import lib
from .context_base import ContextBase
from .errors import LlamaError

__all__ = ["KVMemory"]


class KVMemory(ContextBase):
    """The KV-memory methods of a :class:`~cortex_llama.context.Context` (a base
    class of it; see :class:`ContextBase`)."""

    def clear(self, data: bool = True) -> None:
        """Empty the whole KV cache (``data=True`` also zeroes the buffers)."""
        with self.lock:
            lib.llama_memory_clear(self.memory_handle, data)

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions ``[p0, p1)`` of ``seq_id`` (-1: all sequences / open ends).

        Returns False when llama.cpp cannot remove a partial range (recurrent models).
        """
        with self.lock:
            return bool(lib.llama_memory_seq_rm(self.memory_handle, self.check_seq(seq_id, True), p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Share positions ``[p0, p1)`` of sequence ``src`` with sequence ``dst``."""
        with self.lock:
            lib.llama_memory_seq_cp(self.memory_handle, self.check_seq(src), self.check_seq(dst), p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        """Drop every sequence but ``seq_id``."""
        with self.lock:
            lib.llama_memory_seq_keep(self.memory_handle, self.check_seq(seq_id))

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Shift positions ``[p0, p1)`` of ``seq_id`` by ``delta`` (needs :attr:`can_shift`)."""
        with self.lock:
            if not lib.llama_memory_can_shift(self.memory_handle):
                raise LlamaError("this context's memory cannot shift positions")
            lib.llama_memory_seq_add(self.memory_handle, self.check_seq(seq_id, True), p0, p1, delta)

    def seq_div(self, seq_id: int, p0: int, p1: int, d: int) -> None:
        """Integer-divide positions ``[p0, p1)`` of ``seq_id`` by ``d`` (> 1)."""
        if d < 1:
            raise ValueError(f"divisor must be >= 1, got {d}")
        with self.lock:
            if not lib.llama_memory_can_shift(self.memory_handle):
                raise LlamaError("this context's memory cannot shift positions")
            lib.llama_memory_seq_div(self.memory_handle, self.check_seq(seq_id, True), p0, p1, d)

    def seq_pos_min(self, seq_id: int) -> int:
        """Smallest position of ``seq_id`` in the cache, -1 when it is empty."""
        with self.lock:
            return int(lib.llama_memory_seq_pos_min(self.memory_handle, self.check_seq(seq_id)))

    def seq_pos_max(self, seq_id: int) -> int:
        """Largest position of ``seq_id`` in the cache, -1 when it is empty."""
        with self.lock:
            return int(lib.llama_memory_seq_pos_max(self.memory_handle, self.check_seq(seq_id)))

    @property
    def can_shift(self) -> bool:
        return bool(lib.llama_memory_can_shift(self.memory_handle))
