"""Embeddings, the :class:`LLM` methods that use its embedding context
(``ModelConfig(embeddings=True)``): embed, embed_tokens, aembed and rerank."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from .embed import Embedder, disabled
from .model import Model
from .rerank import RerankResult, rerank_documents

__all__ = ["EmbeddingMethods"]


class EmbeddingMethods:
    """The embedding methods of :class:`~cortex_llama.llm.LLM` (a base class of
    it). They reach the model through :attr:`model` and :attr:`embedder`, which
    LLM implements."""

    @property
    @abstractmethod
    def model(self) -> Model:
        """The loaded model; ClosedError when unloaded."""

    @property
    @abstractmethod
    def embedder(self) -> Embedder | None:
        """The embedding context, None when disabled; ClosedError when unloaded."""

    def embed(self, texts: str | Sequence[str | Sequence[int]], *, pooling: str | None = None,
              normalize: bool = True) -> np.ndarray:
        """Embed one text (shape ``(n_embd,)``) or many (``(n, n_embd)``); an item
        of a sequence may be a list of token ids instead of a text.

        Many texts go into one batch as separate sequences, in the embedding
        context (separate from generation; embed calls are serialized).
        ``pooling`` is the model's by default (mean when it has none);
        ``normalize`` scales to unit length. Raises ``ValueError`` for an empty
        text or token list, a token id outside the vocabulary, an item longer
        than the batch size, :class:`LlamaError` when
        embeddings are disabled, :class:`ClosedError` when unloaded.
        """
        embedder = self.embedder
        if embedder is None:
            raise disabled()
        return embedder.embed(texts, pooling=pooling, normalize=normalize)

    def embed_tokens(self, texts: str | Sequence[str | Sequence[int]]) -> list[np.ndarray]:
        """The embedding of every token (no pooling; llama-server's ``--pooling
        none``): one ``(n_tokens, n_embd)`` array per text, not normalized. Raises
        like :meth:`embed`."""
        embedder = self.embedder
        if embedder is None:
            raise disabled()
        return embedder.embed_tokens(texts)

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None) -> list[RerankResult]:
        """Score ``documents`` against ``query`` with the model's ranking head
        (rank pooling; ``ModelConfig(embeddings=True)`` and a reranking GGUF);
        returns :class:`RerankResult` best first, at most ``top_n``.

        Raises ``ValueError`` for an empty query or no documents, a non-string
        document, a model without a ranking head or a pair longer than the batch
        size; :class:`LlamaError` when embeddings are disabled,
        :class:`ClosedError` when unloaded.
        """
        model = self.model
        embedder = self.embedder
        if embedder is None:
            raise disabled()
        return rerank_documents(model, embedder, query, documents, top_n)

    async def aembed(self, texts: str | Sequence[str | Sequence[int]], **kwargs: Any) -> np.ndarray:
        """:meth:`embed` in a worker thread."""
        return await asyncio.to_thread(self.embed, texts, **kwargs)
