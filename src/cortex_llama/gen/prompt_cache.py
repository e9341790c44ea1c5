"""The host-memory prompt cache (llama-server's ``--cache-ram``): KV states of
prompts that left their slot, kept in RAM so a later request with the same
start is restored instead of evaluated again.

When a request takes a slot and more than half of the slot's cells would go
(another conversation, not the same one's next turn), the slot's state is saved
here first (``llama_state_seq_get_data``); when an entry shares a
longer prefix with a new request than any slot does, it is loaded into the
request's slot (``llama_state_seq_set_data``) and leaves the cache. As
llama-server, an entry is only restored when at least a quarter of it is kept
(a long prompt is not thrown away for a short match). Entries are evicted least
recently used first to stay under the size limit. Plain data: the scheduler
reads the entries' tokens, the runner moves the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .scheduler import common_prefix

__all__ = ["PromptCache", "CacheEntry"]

MIN_KEEP = 0.25  # llama-server's: an entry is restored only if this share of it is reused


@dataclass(eq=False)
class CacheEntry:
    """One saved prompt: its tokens, the LoRA scales its cells were computed
    with, and the sequence state bytes."""

    tokens: tuple[int, ...]
    lora_key: tuple[float, ...]
    data: bytes = field(repr=False, default=b"")


class PromptCache:
    """Saved prompt states up to ``limit_bytes`` (None: no limit)."""

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit_bytes = limit_bytes
        self.entries: list[CacheEntry] = []  # least recently used first
        self.hits = 0
        self.saves = 0

    @property
    def size_bytes(self) -> int:
        return sum(len(e.data) for e in self.entries)

    def best(self, feed: Sequence[int], lora_key: tuple[float, ...], better_than: int) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``feed`` (more than
        ``better_than`` entries, leaving one to evaluate, keeping at least
        :data:`MIN_KEEP` of the entry), and that prefix's length."""
        best, best_n = None, better_than
        for e in self.entries:
            if e.lora_key != lora_key:
                continue
            n = min(common_prefix(e.tokens, feed), len(feed) - 1)
            if n > best_n and n >= MIN_KEEP * len(e.tokens):
                best, best_n = e, n
        return best, best_n

    def take(self, entry: CacheEntry) -> None:
        """``entry`` is being restored into a slot: it leaves the cache."""
        self.entries.remove(entry)
        self.hits += 1

    def put(self, tokens: Sequence[int], lora_key: tuple[float, ...], data: bytes) -> None:
        """Keep a slot's saved state; entries it makes redundant (a prefix of it)
        go, and the least recently used go while the cache is over its limit."""
        toks = tuple(tokens)
        self.entries = [e for e in self.entries
                        if not (e.lora_key == lora_key and toks[:len(e.tokens)] == e.tokens)]
        self.entries.append(CacheEntry(toks, lora_key, data))
        self.saves += 1
        if self.limit_bytes is not None:
            size = self.size_bytes
            while self.entries and size > self.limit_bytes:
                size -= len(self.entries.pop(0).data)
