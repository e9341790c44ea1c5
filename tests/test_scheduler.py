"""The engine's scheduler on its own (pure Python: no model, no C calls).

Admission order, prefix reuse choice, preemption choice and the KV budget, in
both KV layouts, checked on plain step plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_llama.gen.prompt_cache import PromptCache
from cortex_llama.gen.scheduler import KVOp, Scheduler, StepPlan, common_prefix


@dataclass(eq=False)
class Req:
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    cancel_requested: bool = False
    pinned_slot: int | None = None
    lora_key: tuple[float, ...] = ()


def _run_step(s: Scheduler, token: int = 7) -> StepPlan:
    """Plan a step, pretend it was evaluated, and grow every job that got logits."""
    plan = s.plan()
    for span in plan.spans:
        s.committed(span)
    for span in plan.spans:
        if span.last and span.job in s.jobs:
            span.job.req.tokens.append(token)
            if not s.grow(span.job, token):
                s.release(span.job)
    return plan


def test_admission_is_fifo_and_fills_free_slots() -> None:
    s = Scheduler(2, 64, 32, per_slot=True)
    reqs = [Req([1, 2, 3]), Req([4, 5]), Req([6])]
    s.queue.extend(reqs)
    plan = s.plan()
    assert [j.req for j, _ in plan.admitted] == reqs[:2]
    assert list(s.queue) == [reqs[2]]
    s.release(plan.admitted[0][0])
    plan = s.plan()
    assert [j.req for j, _ in plan.admitted] == [reqs[2]]


def test_decoding_tokens_come_first_then_prompts_oldest_first_within_n_batch() -> None:
    s = Scheduler(3, 1000, 16, per_slot=True)
    s.queue.append(Req([1]))
    _run_step(s)  # the first request is now decoding (one pending token)
    long_a, long_b = Req(list(range(10, 30))), Req(list(range(40, 60)))
    s.queue.extend([long_a, long_b])
    plan = s.plan()
    assert [(sp.n, sp.last) for sp in plan.spans] == [(1, True), (15, False)]
    assert plan.spans[1].job.req is long_a
    assert plan.n_tokens <= 16


def test_reuse_picks_the_slot_with_the_longest_prefix() -> None:
    s = Scheduler(3, 100, 64, per_slot=True)
    for slot, cached in zip(s.slots, ([1, 2, 9], [1, 2, 3, 4], [])):
        slot.cached[:] = cached
    s.queue.append(Req([1, 2, 3, 4, 5]))
    plan = s.plan()
    job, reused = plan.admitted[0]
    assert job.slot.seq_id == 1 and reused == 4
    assert plan.spans[0].start == 4 and plan.spans[0].n == 1


def test_a_short_shared_prefix_takes_the_least_recently_used_slot_as_llama_server() -> None:
    """llama-server's --slot-prompt-similarity (0.1): a slot is chosen for its cache
    only when the shared prefix is more than a tenth of the prompt; else the least
    recently used slot, an empty one first, so a used slot keeps its cache."""
    prompt = list(range(100, 130))  # 30 tokens: 3 shared are not more than 10 %
    s = Scheduler(3, 100, 64, per_slot=True)
    s.slots[0].cached[:] = prompt[:3] + [1, 2, 3, 4, 5]
    s.slots[0].last_used = 5
    s.queue.append(Req(list(prompt)))
    job, reused = s.plan().admitted[0]
    assert job.slot.seq_id == 1 and reused == 0 and s.slots[0].cached == prompt[:3] + [1, 2, 3, 4, 5]

    s = Scheduler(3, 100, 64, per_slot=True)  # 4 of 30 shared: more than 10 %: that slot
    s.slots[0].cached[:] = prompt[:4] + [1, 2]
    s.slots[0].last_used = 5
    s.queue.append(Req(list(prompt)))
    job, reused = s.plan().admitted[0]
    assert job.slot.seq_id == 0 and reused == 4

    s = Scheduler(2, 100, 64, per_slot=True, slot_similarity=0.0)  # 0: any shared prefix
    s.slots[0].cached[:] = prompt[:1]
    s.slots[0].last_used = 5
    s.queue.append(Req(list(prompt)))
    assert s.plan().admitted[0][0].slot.seq_id == 0

    s = Scheduler(2, 100, 64, per_slot=True)  # no slot qualifies: the least recently used, its prefix kept
    for slot, used in zip(s.slots, (7, 3)):
        slot.cached[:] = prompt[:2] + [9]
        slot.last_used = used
    s.queue.append(Req(list(prompt)))
    job, reused = s.plan().admitted[0]
    assert job.slot.seq_id == 1 and reused == 2


def test_reuse_leaves_one_token_to_evaluate_and_trims_the_rest() -> None:
    s = Scheduler(1, 100, 64, per_slot=True)
    s.slots[0].cached[:] = [1, 2, 3, 8, 8]
    s.queue.append(Req([1, 2, 3]))
    plan = s.plan()
    assert plan.admitted[0][1] == 2  # the last prompt token is evaluated again for its logits
    assert KVOp("trim", 0, start=2) in plan.ops


def test_a_sliding_window_that_dropped_positions_disables_reuse() -> None:
    s = Scheduler(1, 100, 64, per_slot=True, window_dropped=lambda seq: True)
    s.slots[0].cached[:] = [1, 2, 3, 4]
    s.queue.append(Req([1, 2, 3, 4, 5]))
    plan = s.plan()
    assert plan.admitted[0][1] == 0 and plan.ops == [KVOp("clear", 0)]


@pytest.mark.parametrize("per_slot", [True, False])
def test_a_running_slots_longer_prefix_is_copied(per_slot: bool) -> None:
    s = Scheduler(2, 100, 64, per_slot=per_slot)
    s.queue.append(Req([1, 2, 3, 4, 5, 6]))
    _run_step(s)
    s.queue.append(Req([1, 2, 3, 4, 5, 9]))
    plan = s.plan()
    job, reused = plan.admitted[0]
    assert reused == 5 and plan.prefix_copies == 1
    copy = KVOp("copy", job.slot.seq_id, start=5, src=0)
    assert copy in plan.ops
    # a stream of its own is copied whole, then cut back to the shared prefix
    assert (KVOp("trim", job.slot.seq_id, start=5) in plan.ops) is per_slot


def test_per_slot_requests_end_at_their_slots_capacity_and_are_never_preempted() -> None:
    s = Scheduler(2, 8, 64, per_slot=True)
    a, b = Req([1, 2, 3]), Req([4, 5, 6])
    s.queue.extend([a, b])
    for _ in range(20):
        plan = _run_step(s)
        assert not plan.preempted
    assert not s.jobs and len(a.tokens) == len(b.tokens) == 6  # 3 + 6 - 1 cells: the capacity
    assert all(len(slot.cached) <= 8 for slot in s.slots)


def test_unified_pressure_evicts_idle_prefixes_then_preempts_the_youngest() -> None:
    s = Scheduler(3, 20, 64, per_slot=False)
    s.slots[2].cached[:] = list(range(100, 105))  # an idle slot's old prefix
    a, b = Req([1, 2, 3, 4]), Req([5, 6, 7, 8])
    s.queue.extend([a, b])
    preempted: list[Req] = []
    for _ in range(12):
        plan = _run_step(s)
        preempted.extend(j.req for j in plan.preempted)
        assert s.cells_used <= 20
    assert not s.slots[2].cached  # evicted first
    assert preempted and preempted[0] is b  # the youngest goes, and waits at the head
    assert s.jobs[0].req is a


@settings(max_examples=60, deadline=None)
@given(per_slot=st.booleans(), n_slots=st.integers(1, 4), capacity=st.integers(8, 40),
       n_batch=st.integers(1, 16),
       prompts=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=12), min_size=1, max_size=6))
def test_budget_is_never_exceeded_and_nobody_is_lost(per_slot: bool, n_slots: int, capacity: int,
                                                      n_batch: int, prompts: list[list[int]]) -> None:
    limit = capacity - 1
    reqs = [Req(p[:limit]) for p in prompts]
    n_batch = max(n_batch, n_slots)  # every running slot's next token fits a step (ModelConfig checks it)
    s = Scheduler(n_slots, capacity, n_batch, per_slot=per_slot)
    s.queue.extend(reqs)
    for _ in range(400):
        if not s.has_work():
            break
        plan = _run_step(s)
        assert plan.n_tokens <= n_batch
        if per_slot:
            assert all(len(slot.cached) <= capacity for slot in s.slots)
        else:
            assert s.cells_used <= capacity
        for r in reqs:  # cap the outputs so that the loop ends
            jobs = [j for j in s.jobs if j.req is r]
            if len(r.tokens) >= 5 and jobs:
                s.release(jobs[0])
    assert not s.has_work()
    assert all(r.tokens for r in reqs)  # every request got to generate


@given(a=st.lists(st.integers(0, 3), max_size=20), b=st.lists(st.integers(0, 3), max_size=20))
def test_common_prefix(a: list[int], b: list[int]) -> None:
    n = common_prefix(a, b)
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]


def test_cancelled_requests_leave_queue_and_slots() -> None:
    s = Scheduler(1, 50, 8, per_slot=True)
    a, b = Req([1, 2]), Req([3])
    s.queue.extend([a, b])
    s.plan()
    a.cancel_requested = b.cancel_requested = True
    jobs, waiting = s.take_cancelled()
    assert [j.req for j in jobs] == [a] and waiting == [b] and not s.queue


def test_a_batch_smaller_than_the_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="n_batch=1 .*n_batch >= n_slots"):
        Scheduler(2, 8, 1, per_slot=True)


def test_a_pinned_request_waits_for_its_slot_and_holds_the_queue() -> None:
    s = Scheduler(2, 64, 32, per_slot=True)
    first = Req([1, 2])
    s.queue.append(first)
    (job, _), = s.plan().admitted
    assert job.slot.seq_id == 0
    pinned, behind = Req([3], pinned_slot=0), Req([4])
    s.queue.extend([pinned, behind])
    assert s.plan().admitted == []  # slot 1 is free, but the head wants slot 0 (FIFO)
    s.release(job)
    (job2, _), (job3, _) = s.plan().admitted
    assert (job2.req, job2.slot.seq_id) == (pinned, 0)
    assert (job3.req, job3.slot.seq_id) == (behind, 1)


def test_reserved_slots_are_not_admitted_into_and_set_cached_is_reused() -> None:
    s = Scheduler(2, 64, 32, per_slot=True)
    s.reserved.add(0)
    s.queue.append(Req([1, 2, 3]))
    (job, _), = s.plan().admitted
    assert job.slot.seq_id == 1
    s.release(job)
    s.reserved.clear()
    s.set_cached(0, [9, 8, 7, 6])  # a restored slot file
    s.queue.append(Req([9, 8, 7, 6, 5]))
    (job, reused), = s.plan().admitted
    assert (job.slot.seq_id, reused) == (0, 4)
    with pytest.raises(ValueError, match="running a request"):
        s.set_cached(0, [])
    with pytest.raises(ValueError, match=r"slot 5 is not in \[0, 2\)"):
        s.slot(5)


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
