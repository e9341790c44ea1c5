"""Threads: contexts decode in parallel, a shared context is serialized safely."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from cortex_llama import LLM, Context, Model

from .helpers import greedy_argmax


def run_in_threads(fn: Callable[[int], Any], n: int) -> list[Any]:
    """Run ``fn(0) .. fn(n-1)`` in ``n`` threads at once; return results, re-raise errors."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_two_contexts_in_two_threads_match_sequential(tiny: Model) -> None:
    prompts = [tiny.tokenize("first thread prompt"), tiny.tokenize("second, different prompt")]

    def generate(i: int) -> list[int]:
        with Context(tiny, n_ctx=256, n_threads=1) as ctx:
            return greedy_argmax(ctx, prompts[i], 48)

    sequential = [generate(i) for i in range(2)]
    assert run_in_threads(generate, 2) == sequential


def test_shared_context_is_serialized(tiny: Model) -> None:
    """Two threads decoding into one context (different sequences) never corrupt it."""
    with Context(tiny, n_ctx=1024, n_seq_max=2, n_threads=1) as ctx:

        def work(seq: int) -> None:
            b = ctx.new_batch(8)
            for pos in range(64):
                b.clear()
                b.add(100 + seq, pos, seq, logits=True)
                ctx.decode(b)

        run_in_threads(work, 2)
        assert ctx.seq_pos_max(0) == ctx.seq_pos_max(1) == 63


def test_engine_counters_stay_consistent_under_32_submitters(tiny_path: Any) -> None:
    from cortex_llama import LLM

    with LLM(tiny_path, context_size=1024, n_seq_max=8, threads=2, embeddings=False) as llm:
        def work(i: int) -> list[int]:
            return [len(llm.complete(f"prompt {i} {j}", max_tokens=3, temperature=0).tokens)
                    for j in range(4)]

        counts = run_in_threads(work, 32)
        m = llm.metrics()
        assert m["requests_total"] == m["requests_finished"] == 128
        assert m["generated_tokens_total"] == sum(sum(c) for c in counts)
        assert m["requests_failed"] == m["requests_cancelled"] == 0


# -- one computing thread per model (ggml's OpenMP workers belong to the thread that computes)
def test_engine_call_runs_in_the_engine_thread(small_q4_path: Path) -> None:
    """Engine.call runs a function between two steps in the engine thread (at once from
    it), with its result or exception in the future; ClosedError after close."""
    from cortex_llama import ClosedError
    from cortex_llama.gen.engine import Engine

    with LLM(small_q4_path, context_size=256, threads=2, n_seq_max=2) as llm:
        engine = llm._require_engine()
        ident = engine.call(threading.get_ident).result(30)
        assert ident != threading.get_ident()
        assert engine.call(lambda: engine.call(threading.get_ident).result(0)).result(30) == ident  # nested
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 // 0).result(30)
        req = llm.submit("Running beside calls", temperature=0, max_tokens=24)
        assert [engine.call(lambda i=i: i).result(30) for i in range(3)] == [0, 1, 2]
        assert len(req.result(60).tokens) >= 1
    assert isinstance(engine, Engine)
    with pytest.raises(ClosedError):
        engine.call(lambda: None)


def test_embeddings_compute_through_the_given_thread(small_q4_path: Path) -> None:
    """The Embedder computes through its run_in (the LLM's: the engine thread), its
    checks stay in the caller's thread; results equal a direct run."""
    from cortex_llama.embed import Embedder

    seen: list[int] = []

    def run_in(fn: Any) -> Any:
        seen.append(threading.get_ident())
        return fn()

    with Model(small_q4_path) as model:
        direct = Embedder(model, batch_size=64, n_seq_max=2, threads=2)
        routed = Embedder(model, batch_size=64, n_seq_max=2, threads=2, run_in=run_in)
        try:
            np.testing.assert_array_equal(routed.embed(["a b", "c"]), direct.embed(["a b", "c"]))
            assert len(routed.embed_tokens(["a b"])[0]) == len(model.tokenize("a b"))
            with pytest.raises(ValueError, match=r"texts\[0\]"):
                routed.embed([""])  # refused before run_in
            assert len(seen) == 2
        finally:
            direct.close()
            routed.close()
