"""Reranking for ``LLM.rerank``: a (query, document) pair laid out as llama-server
lays it out, scored by the model's classification head (rank pooling).

The layout (llama-server's ``format_prompt_rerank``): the GGUF's ``rerank`` chat
template with ``{query}`` and ``{document}`` filled in when it has one (Qwen3
rerankers), else BOS (if the vocab adds it), the query, EOS (if added), SEP (if
added), the document and EOS (if added) (BERT-style cross-encoders). The score
is the head's first output: P("yes") for Qwen3 rerankers, the logit for BERT ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .embed import Embedder
from .model import Model

__all__ = ["RerankResult", "rerank_tokens", "ranked", "rerank_documents"]


@dataclass(frozen=True)
class RerankResult:
    """One document's ``score`` (higher is more relevant), its ``index`` in the
    request and the ``tokens`` its pair took."""

    index: int
    score: float
    tokens: int


def rerank_tokens(model: Model, query: str, document: str) -> list[int]:
    """The tokens of one (query, document) pair for the ranking head."""
    template = model.chat_template("rerank")
    if template is not None:
        prompt = template.replace("{query}", query).replace("{document}", document)
        return model.tokenize(prompt, add_special=False, parse_special=True).tolist()
    vocab = model.vocab
    eos = vocab.eos if vocab.eos is not None else vocab.sep
    out: list[int] = []
    if vocab.add_bos and vocab.bos is not None:
        out.append(vocab.bos)
    out += model.tokenize(query, add_special=False).tolist()
    if vocab.add_eos and eos is not None:
        out.append(eos)
    if vocab.add_sep and vocab.sep is not None:
        out.append(vocab.sep)
    out += model.tokenize(document, add_special=False).tolist()
    if vocab.add_eos and eos is not None:
        out.append(eos)
    return out


def ranked(scores: np.ndarray, lengths: Sequence[int], top_n: int | None) -> list[RerankResult]:
    """Results best first (a stable sort: equal scores keep their order), at most ``top_n``."""
    order = sorted(range(len(lengths)), key=lambda i: -float(scores[i]))
    return [RerankResult(i, float(scores[i]), lengths[i]) for i in order[:top_n]]


def rerank_documents(model: Model, embedder: Embedder, query: str, documents: Sequence[str] | str,
                     top_n: int | None) -> list[RerankResult]:
    """Score ``documents`` against ``query`` (see ``LLM.rerank``). Raises
    ``ValueError`` for an empty query, no documents, a non-string document,
    ``top_n < 0``, a model without a ranking head or a pair longer than the
    embedder's batch."""
    if not isinstance(query, str) or not query:
        raise ValueError("query must be a non-empty string")
    docs = [documents] if isinstance(documents, str) else list(documents)
    if not docs or not all(isinstance(d, str) for d in docs):
        raise ValueError("documents must be a non-empty list of strings")
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}")
    pairs = [rerank_tokens(model, query, d) for d in docs]
    scores = embedder.embed(pairs, pooling="rank", normalize=False)[:, 0]
    return ranked(scores, [len(p) for p in pairs], top_n)
