"""The host-memory prompt cache (``ModelConfig.prompt_cache_mib``, llama-server's
``--cache-ram``): a prompt whose slot was taken by another request is restored
from RAM, equal to its first run; the cache's own rules on plain data; and on the
Q4_0 synthetic model through the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cortex_llama import LLM
from cortex_llama.gen.prompt_cache import PromptCache
from cortex_llama.gen.scheduler import Scheduler

LONG = [f"Document {i}: " + " ".join(f"word{i}x{j}" for j in range(40)) for i in range(3)]


@dataclass(eq=False)
class Req:
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    cancel_requested: bool = False
    pinned_slot: int | None = None
    lora_key: tuple[float, ...] = ()


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


def test_scheduler_saves_before_the_cells_go_and_restores_into_the_slot() -> None:
    s = Scheduler(1, 64, 32, per_slot=True, prompt_cache=PromptCache(None))
    a = Req([1, 2, 3, 4, 5, 6])
    s.queue.append(a)
    (job, _), = s.plan().admitted
    job.slot.cached[:] = a.prompt_tokens  # as if evaluated
    s.release(job)
    s.queue.append(Req([9, 9, 9]))
    plan = s.plan()
    assert [op.kind for op in plan.ops] == ["save", "clear"]
    assert plan.ops[0].payload == ((1, 2, 3, 4, 5, 6), ())
    assert s.prompt_cache is not None
    s.prompt_cache.put(*plan.ops[0].payload, data=b"state")  # what the runner does
    s.release(plan.admitted[0][0])
    s.queue.append(Req([1, 2, 3, 4, 7]))
    plan = s.plan()
    assert [op.kind for op in plan.ops] == ["clear", "restore", "trim"]  # (its slot held nothing)
    assert plan.admitted[0][1] == 4 and s.prompt_cache.hits == 1


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
