"""Embeddings for ``LLM.embed``: a second context of their own, made on demand.

Calls are **serialized** by a lock (one embedding batch at a time, packed with
as many texts as fit); generation runs in the engine's context and is not
blocked by them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from .batch import Batch
from .context import Context
from .errors import LlamaError
from .model import Model

__all__ = ["Embedder"]


class Embedder:
    """Embeds texts with ``model`` in its own embedding context.

    ``Embedder(model, batch_size, n_seq_max, threads, threads_batch, pooling)``;
    the context is created at the first call (and again when the pooling changes).
    """

    def __init__(self, model: Model, *, batch_size: int, n_seq_max: int, threads: int,
                 threads_batch: int | None = None, pooling: str | None = None,
                 run_in: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        #: runs a computation in the thread that does every computation on the model
        #: (``LLM``: the engine's, see ``Engine.call``); None: in the caller's thread
        self._run_in = run_in or (lambda fn: fn())
        self.model = model
        self.batch_size = batch_size
        self.n_seq_max = n_seq_max
        self.threads = threads
        self.threads_batch = threads_batch
        self.pooling = pooling
        self._ctx: Context | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
            self._ctx = None

    def _context(self, pooling: str) -> Context:
        ctx = self._ctx
        if ctx is None or ctx.closed or ctx.pooling != pooling:
            if ctx is not None:
                ctx.close()
            ctx = Context(self.model, n_ctx=self.batch_size * self.n_seq_max, n_batch=self.batch_size,
                          n_ubatch=self.batch_size, n_seq_max=self.n_seq_max, n_threads=self.threads,
                          n_threads_batch=self.threads_batch, embeddings=True, pooling=pooling,
                          kv_unified=True)
            self._ctx = ctx
        return ctx

    def embed_tokens(self, texts: str | Sequence[str | Sequence[int]]) -> list[np.ndarray]:
        """The embedding of every token (pooling ``none``, llama-server's
        ``--pooling none``): one ``(n_tokens, n_embd)`` array per text, not
        normalized. Raises like :meth:`embed`."""
        toks = self._checked(texts)
        return self._run_in(lambda: self._embed_tokens(toks))  # type: ignore[no-any-return]

    def _embed_tokens(self, toks: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        with self._lock:
            ctx = self._context("none")
            batch = Batch(ctx.n_batch, ctx.n_seq_max, n_vocab=self.model.n_vocab)
            for tk in toks:
                batch.clear()
                ctx.clear()
                batch.add_many(tk, 0, 0, logits=True)
                ctx.decode(batch)
                out.append(np.stack([ctx.embeddings(j) for j in range(len(tk))]))
        return out

    def _checked(self, texts: str | Sequence[str | Sequence[int]]) -> list[np.ndarray]:
        """Each text's tokens. Raises ``ValueError`` for no texts, an empty or
        oversized one, or a token id outside the vocabulary (naming ``texts[i]``)."""
        items: list[str | Sequence[int]] = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ValueError("no texts to embed")
        toks = [self._tokens(self.model, t, i) for i, t in enumerate(items)]
        for i, tk in enumerate(toks):
            if len(tk) > self.batch_size:
                raise ValueError(f"texts[{i}] has {len(tk)} tokens, more than the batch size "
                                 f"{self.batch_size} (ModelConfig.batch_size)")
        return toks

    @staticmethod
    def _tokens(model: Model, item: str | Sequence[int], i: int) -> np.ndarray:
        """The tokens of one item: a text tokenized, or token ids checked against
        the vocabulary. Raises ``ValueError`` naming ``texts[i]``."""
        if isinstance(item, str):
            if item:
                return model.tokenize(item)
        elif isinstance(item, Sequence) and item and all(
                isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in item):
            try:
                return model.vocab.check_tokens([int(t) for t in item])
            except ValueError as exc:
                raise ValueError(f"texts[{i}]: {exc}") from None
        raise ValueError(f"texts[{i}] must be a non-empty string or a non-empty list of token ids")

    def embed(self, texts: str | Sequence[str | Sequence[int]], *, pooling: str | None = None,
              normalize: bool = True) -> np.ndarray:
        """Embed one text (shape ``(n_embd,)``) or many (``(n, n_embd)``); an item
        of a sequence may also be a list of token ids, embedded as is.

        Raises ``ValueError`` for no texts, an empty text or token list, a token id
        outside the vocabulary, or an item longer than the batch size,
        :class:`ContextError` when the context cannot be made.
        """
        single = isinstance(texts, str)
        toks = self._checked(texts)
        pooling = pooling or self.pooling or "mean"
        if pooling == "none":
            raise ValueError("pooling 'none' gives one vector per token: use embed_tokens")
        out: np.ndarray = self._run_in(lambda: self._pooled(toks, pooling))
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms == 0, 1, norms)
        return out[0] if single else out

    def _pooled(self, toks: list[np.ndarray], pooling: str) -> np.ndarray:
        model = self.model
        with self._lock:
            ctx = self._context(pooling)
            width = model.n_cls_out if ctx.pooling == "rank" else model.n_embd
            out = np.empty((len(toks), width), dtype=np.float32)
            batch = Batch(ctx.n_batch, ctx.n_seq_max, n_vocab=model.n_vocab)
            i = 0
            while i < len(toks):
                batch.clear()
                ctx.clear()
                members: list[int] = []
                while i < len(toks) and len(members) < ctx.n_seq_max and \
                        batch.n_tokens + len(toks[i]) <= batch.capacity:
                    batch.add_many(toks[i], 0, len(members), logits=True)
                    members.append(i)
                    i += 1
                ctx.decode(batch)
                for s, idx in enumerate(members):
                    out[idx] = ctx.seq_embeddings(s)
        return out


def disabled() -> LlamaError:
    return LlamaError("embeddings are disabled (ModelConfig.embeddings=False)")
