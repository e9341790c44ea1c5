"""Threads: contexts decode in parallel, a shared context is serialized safely."""

from __future__ import annotations

import threading

from cortex_llama import Context, Model

from .helpers import greedy_argmax


def test_two_contexts_in_two_threads_match_sequential(tiny: Model) -> None:
    prompts = [tiny.tokenize("first thread prompt"), tiny.tokenize("second, different prompt")]
    sequential = []
    for p in prompts:
        with Context(tiny, n_ctx=256, n_threads=1) as ctx:
            sequential.append(greedy_argmax(ctx, p, 48))

    results: list[list[int] | None] = [None, None]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with Context(tiny, n_ctx=256, n_threads=1) as ctx:
                results[i] = greedy_argmax(ctx, prompts[i], 48)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == sequential


def test_shared_context_is_serialized(tiny: Model) -> None:
    """Two threads decoding into one context (different sequences) never corrupt it."""
    with Context(tiny, n_ctx=1024, n_seq_max=2, n_threads=1) as ctx:
        errors: list[BaseException] = []

        def work(seq: int) -> None:
            try:
                b = ctx.new_batch(8)
                for pos in range(64):
                    b.clear()
                    b.add(100 + seq, pos, seq, logits=True)
                    ctx.decode(b)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert ctx.seq_pos_max(0) == ctx.seq_pos_max(1) == 63
