"""The host-memory prompt cache (``ModelConfig.prompt_cache_mib``, llama-server's
``--cache-ram``): a prompt whose slot was taken by another request is restored
from RAM, equal to its first run; the cache's own rules on plain data; and on the
Q4_0 synthetic model through the engine (the scheduler's save and restore
operations are tested in tests/test_scheduler.py)."""

from __future__ import annotations

from pathlib import Path

from cortex_llama import LLM
from cortex_llama.gen.prompt_cache import PromptCache

LONG = [f"Document {i}: " + " ".join(f"word{i}x{j}" for j in range(40)) for i in range(3)]


def test_cache_rules() -> None:
    cache = PromptCache(limit_bytes=10)
    cache.put([1, 2, 3], (), b"abc")
    cache.put([1, 2, 3, 4], (), b"abcd")  # makes the shorter entry redundant
    assert [e.tokens for e in cache.entries] == [(1, 2, 3, 4)]
    cache.put([7, 8], (), b"78")
    entry, n = cache.best([1, 2, 3, 4, 5], (), better_than=0)
    assert entry is not None and entry.tokens == (1, 2, 3, 4) and n == 4
    assert cache.best([1, 2, 3, 4, 5], (1.0,), better_than=0)[0] is None  # other LoRA scales
    assert cache.best([1, 9, 9], (), better_than=0)[1] == 1  # 1 of 4 kept: a quarter, enough
    assert cache.best([1, 2, 3, 4, 5], (), better_than=4)[0] is None  # not better than the slot's own
    cache.put([5] * 3, (), b"x" * 6)  # over the limit: the least recently used go
    assert [e.tokens for e in cache.entries] == [(7, 8), (5, 5, 5)]
    cache.put(range(20, 28), (), b"")
    assert cache.best([20, 9, 9], (), better_than=0)[0] is None  # 1 of 8 kept: under a quarter


def test_a_prompt_evicted_from_its_slot_comes_back_from_ram(small_q4_path: Path) -> None:
    with LLM(small_q4_path, threads=2, n_seq_max=2, context_size=512) as llm:
        first = [llm.complete(p, temperature=0, max_tokens=8) for p in LONG]  # the third evicts the first
        again = llm.complete(LONG[0], temperature=0, max_tokens=8)
        m = llm.metrics()
        assert again.tokens == first[0].tokens
        assert again.usage.cached_tokens >= again.usage.prompt_tokens - 1
        assert m["prompt_cache_hits_total"] == 1 and m["prompt_cache_saves_total"] >= 1
    with LLM(small_q4_path, threads=2, n_seq_max=2, context_size=512, prompt_cache_mib=0) as llm:
        for p in LONG:
            llm.complete(p, temperature=0, max_tokens=8)
        assert llm.complete(LONG[0], temperature=0, max_tokens=8).usage.cached_tokens < 10  # "Document "
        assert "prompt_cache_hits_total" not in llm.metrics()
