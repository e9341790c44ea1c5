"""Image and audio chunks inside the engine's token feeds.

The engine thinks of a prompt as a list of ints, one per KV cell. A prompt with
media (from :meth:`Projector.tokenize`) becomes such a list too: text chunks
give their token ids, and each media chunk gives ``n_tokens`` negative
*sentinels*, ``-(1 + (h << 16) + k)`` for its k-th embedding, where ``h`` comes
from the chunk's content id (a sha256 of the image or audio). So

* the prefix cache compares images by their id, like tokens (the same image in
  the same place is reused; another image differs at its first cell);
* :func:`span_start` moves a cut that falls inside a media span back to the
  span's start (a span is evaluated whole or not at all);
* a media span is evaluated by the projector (encode, then decode its
  embeddings), text between spans by the ordinary token batches.

Positions are cell indices here: projectors whose model uses M-RoPE (positions
fewer than embeddings) are refused by the facade.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

__all__ = ["prompt_feed", "is_media", "span_start", "span_len", "cut", "MAX_SPAN"]

_OFFSET_BITS = 16
MAX_SPAN = 1 << _OFFSET_BITS  # embeddings per media chunk
_anonymous = itertools.count(1)


def _base(chunk_id: str | None) -> int:
    if chunk_id:
        try:
            h = int(chunk_id[:10], 16)  # 40 bits of the sha256 (sentinels stay in int64)
        except ValueError:
            h = hash(chunk_id) & 0xFFFFFFFFFF
    else:
        h = (1 << 40) | next(_anonymous)  # no id: never equal to another chunk
    return h << _OFFSET_BITS


def is_media(value: int) -> bool:
    return value < 0


def _offset(value: int) -> int:
    return (-value - 1) & (MAX_SPAN - 1)


def span_start(feed: Sequence[int], n: int) -> int:
    """``n`` moved back to the start of the media span it cuts (unchanged otherwise)."""
    if 0 < n < len(feed) and feed[n] < 0:
        n -= _offset(feed[n])
    return n


def span_len(feed: Sequence[int], a: int) -> int:
    """Cells of the media span that starts at ``feed[a]``."""
    n = 1
    while a + n < len(feed) and feed[a + n] < 0 and _offset(feed[a + n]) == n:
        n += 1
    return n


def cut(feed: Sequence[int], a: int, n: int) -> int:
    """How many cells from ``a`` one step evaluates, given room for ``n``: a whole
    media span when one starts at ``a``, else text up to the next span."""
    if feed[a] < 0:
        return span_len(feed, a)
    for i in range(a + 1, min(a + n, len(feed))):
        if feed[i] < 0:
            return i - a
    return n


def prompt_feed(chunks: Any) -> tuple[list[int], dict[int, Any], list[int]]:
    """(feed, media chunks by their first cell, the text tokens alone) of a
    tokenized multimodal prompt (:class:`cortex_llama.multimodal.Chunks`).

    Raises ``ValueError`` for a media chunk of more than :data:`MAX_SPAN` embeddings."""
    feed: list[int] = []
    media: dict[int, Any] = {}
    text: list[int] = []
    for chunk in chunks:
        if chunk.is_media:
            n = chunk.n_tokens
            if n >= MAX_SPAN:
                raise ValueError(f"a {chunk.type} of {n} embeddings exceeds the engine's limit of "
                                 f"{MAX_SPAN - 1}")
            base = _base(chunk.id)
            media[len(feed)] = chunk
            feed.extend(-(1 + base + k) for k in range(n))
        else:
            toks = chunk.tokens.tolist()
            feed.extend(toks)
            text.extend(toks)
    return feed, media, text
