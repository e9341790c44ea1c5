"""What :class:`Context`'s method groups build on: the members of a context they
use, each public and implemented by :class:`~cortex_llama.context.Context`."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import Batch
    from .model import Model

__all__ = ["ContextBase"]


class ContextBase:
    """The base of the method groups a :class:`~cortex_llama.context.Context` is
    made of (its output, KV-memory, state, LoRA and perf methods, each in a
    module of its own). They reach the context only through these members;
    Context implements them, and is the only class to use the groups with.
    """

    model: Model

    @property
    @abstractmethod
    def lock(self) -> Any:
        """The lock that serializes calls on the context."""

    @property
    @abstractmethod
    def handle(self) -> Any:
        """The ``llama_context *``; ClosedError once closed."""

    @property
    @abstractmethod
    def memory_handle(self) -> Any:
        """The context's ``llama_memory_t``; ClosedError once closed."""

    @property
    @abstractmethod
    def n_ctx(self) -> int:
        """KV cells in all; ClosedError once closed."""

    @property
    @abstractmethod
    def n_batch(self) -> int:
        """The most tokens one decode takes; ClosedError once closed."""

    @property
    @abstractmethod
    def n_vocab(self) -> int:
        """The width of a logits row."""

    @property
    @abstractmethod
    def n_embd(self) -> int:
        """The width of an embedding row."""

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """The output rows of the last decode."""

    @property
    @abstractmethod
    def embeddings_enabled(self) -> bool:
        """Whether decodes output embeddings."""

    @abstractmethod
    def check_seq(self, seq_id: int, allow_all: bool = False) -> int:
        """``seq_id`` checked against n_seq_max (-1 too with ``allow_all``)."""

    @abstractmethod
    def new_batch(self, capacity: int | None = None, n_seq_max: int | None = None) -> Batch:
        """A batch sized for the context."""

    @abstractmethod
    def decode(self, batch: Batch) -> None:
        """llama_decode over ``batch``."""

    @abstractmethod
    def encode(self, batch: Batch) -> None:
        """llama_encode over ``batch``."""

    @abstractmethod
    def clear(self, data: bool = True) -> None:
        """Empty the KV cache (KVMemory implements it)."""
