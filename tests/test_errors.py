"""Bad input raises clear Python exceptions before C can crash."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from cortex_llama import (AbortedError, Batch, Context, KVCacheFullError, LlamaError, Model)
from cortex_llama.errors import DecodeError, FatalDecodeError, GrammarError, InvalidBatchError, raise_for_decode

from .helpers import prefill


def test_return_code_table() -> None:
    for rc, cls in [(1, KVCacheFullError), (2, AbortedError), (-1, InvalidBatchError),
                    (-3, FatalDecodeError)]:
        with pytest.raises(cls) as info:
            raise_for_decode(rc, "llama_decode", 8, 64)
        assert info.value.code == rc and isinstance(info.value, DecodeError)
        assert isinstance(info.value, LlamaError)


def test_token_out_of_range(ctx: Context) -> None:
    b = ctx.new_batch()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        b.add(512, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        b.add_many([1, 2, 9999], 0)
    raw = Batch(4)  # no vocab known: the context checks at decode
    raw.add(100000, 0)
    with pytest.raises(ValueError, match="100000"):
        ctx.decode(raw)


def test_negative_position(ctx: Context) -> None:
    b = ctx.new_batch()
    with pytest.raises(ValueError, match="negative"):
        b.add(5, -1)
    with pytest.raises(ValueError, match="negative"):
        b.add_many([5, 6], [-3, 0])


def test_batch_overflow(ctx: Context) -> None:
    b = Batch(3, n_vocab=512)
    b.add_many([1, 2, 3], 0)
    with pytest.raises(ValueError, match="capacity 3"):
        b.add(4, 3)
    big = Batch(1024, n_vocab=512)
    big.add_many(np.ones(600, dtype=np.int32), 0)
    with pytest.raises(ValueError, match="n_batch=512"):
        ctx.decode(big)
    with pytest.raises(ValueError, match="empty"):
        ctx.decode(Batch(2))


def test_seq_id_out_of_range(ctx: Context) -> None:
    b = ctx.new_batch()
    with pytest.raises(ValueError, match="sequence id 4"):
        b.add(5, 0, 4)
    wide = Batch(4, n_seq_max=8, n_vocab=512)
    wide.add(5, 0, 6)
    with pytest.raises(ValueError, match="sequence id 6"):
        ctx.decode(wide)
    with pytest.raises(ValueError, match="sequence id"):
        ctx.seq_cp(0, 9)


def test_raw_view_writes_are_validated(ctx: Context) -> None:
    b = ctx.new_batch()
    b.tokens[:2] = [5, 70000]
    b.positions[:2] = [0, 1]
    b.set_n_tokens(2)
    with pytest.raises(ValueError, match="70000"):
        ctx.decode(b)
    b.tokens[1] = 6
    b.logits[1] = 1
    ctx.decode(b)


def test_kv_cache_full_then_still_usable(tiny: Model) -> None:
    with Context(tiny, n_ctx=64, n_batch=64, n_threads=2) as ctx:
        b = ctx.new_batch()
        n_ctx = ctx.n_ctx  # llama.cpp may round n_ctx up (to 256)
        for start in range(0, n_ctx - 32, 64):
            b.clear()
            b.add_many(np.full(min(64, n_ctx - 32 - start), 300, dtype=np.int32), start)
            ctx.decode(b)
        b.clear()
        b.add_many(np.full(48, 300, dtype=np.int32), n_ctx - 32)
        with pytest.raises(KVCacheFullError, match=f"context size {n_ctx}"):
            ctx.decode(b)
        ctx.clear()
        prefill(ctx, tiny.tokenize("usable again"))
        assert np.isfinite(ctx.logits()).all()


def test_abort_from_another_thread(tiny: Model) -> None:
    with Context(tiny, n_ctx=512, n_batch=512, n_threads=2) as ctx:
        b = ctx.new_batch()
        b.add_many(np.full(500, 300, dtype=np.int32), 0)
        ctx.abort()  # flag set before: the next decode stops at its first check
        with pytest.raises(AbortedError):
            ctx.decode(b)
        ctx.clear()
        ctx.decode(b)  # the flag was reset; it runs through


def test_ctrl_c_aborts_a_long_decode_and_context_stays_usable(small_path) -> None:
    with Model(small_path) as model, Context(model, n_ctx=2048, n_batch=2048, n_ubatch=512,
                                               n_threads=2) as ctx:
        b = ctx.new_batch()
        b.add_many(np.full(2048, 300, dtype=np.int32), 0)
        timer = threading.Timer(0.05, lambda: signal.pthread_kill(threading.main_thread().ident,
                                                                  signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            ctx.decode(b)  # stopped early, long before it would finish
        timer.join()
        ctx.clear()
        prefill(ctx, model.tokenize("still usable"))
        assert np.isfinite(ctx.logits()).all()


def test_logits_of_entry_without_output(ctx: Context) -> None:
    b = ctx.new_batch()
    b.add_many([1, 2, 3], 0, logits=False)
    ctx.decode(b)
    with pytest.raises(IndexError):
        ctx.logits(0)


def test_bad_context_parameters(tiny: Model) -> None:
    with pytest.raises(ValueError, match="pooling"):
        Context(tiny, pooling="max")
    with pytest.raises(ValueError, match="n_threads"):
        Context(tiny, n_threads=0)
    with pytest.raises(ValueError, match="type_k"):
        Context(tiny, type_k="q9_9")
    with pytest.raises(ValueError, match="n_seq_max"):
        Context(tiny, n_seq_max=100000)


def test_wrong_argument_types(tiny: Model, ctx: Context) -> None:
    with pytest.raises(TypeError):
        tiny.tokenize(None)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        ctx.new_batch().add("a", 0)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        ctx.decode([1, 2, 3])  # type: ignore[arg-type]


def test_abort_a_decode_running_in_another_thread(small_path) -> None:
    with Model(small_path) as model, Context(model, n_ctx=2048, n_batch=2048, n_threads=2) as ctx:
        b = ctx.new_batch()
        b.add_many(np.full(2048, 300, dtype=np.int32), 0)
        outcome: list[BaseException | None] = []

        def work() -> None:
            try:
                ctx.decode(b)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        t = threading.Thread(target=work)
        t.start()
        while t.is_alive():
            ctx.abort()
            t.join(0.001)
        assert isinstance(outcome[0], AbortedError)
        ctx.clear()
        prefill(ctx, model.tokenize("usable"))


def test_invalid_batch_carries_llama_cpp_reason(ctx: Context) -> None:
    prefill(ctx, [1, 2, 3])
    b = ctx.new_batch()
    b.add(5, 10, 0, logits=True)  # leaves a gap after position 2
    with pytest.raises(InvalidBatchError) as info:
        ctx.decode(b)
    assert "consecutive" in str(info.value)
    ctx.clear()
    prefill(ctx, [1, 2, 3])


def test_llama_cpp_messages_reach_the_thread_that_caused_them(tiny: Model) -> None:
    """llama.cpp's log is captured per thread: another thread taking its log problems
    at the same time never swallows this thread's parse error."""
    import threading

    from cortex_llama import _lib
    from cortex_llama.sampling import Sampler

    stop = threading.Event()
    seen_elsewhere: list[str] = []

    def drain() -> None:
        while not stop.is_set():
            seen_elsewhere.extend(_lib.take_log_problems())

    other = threading.Thread(target=drain)
    other.start()
    try:
        for _ in range(20):
            with pytest.raises(GrammarError) as exc:
                Sampler.grammar(tiny, 'root ::= "unterminated')
            assert "invalid GBNF grammar: " in str(exc.value), exc.value  # with llama.cpp's reason
    finally:
        stop.set()
        other.join()
    assert seen_elsewhere == []
