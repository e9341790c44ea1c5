"""Greedy decoding, batching of several sequences, prefix forking, and native equality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cortex_llama import Context, Model, Sampler, SamplerChain

from .conftest import have_cc
from .helpers import generate, greedy_argmax, prefill
from .native_reference import build_greedy_reference, run_greedy_reference

PROMPTS = ["Hello world", "The quick brown fox jumps", "a", "Once upon a time, in a land far away"]


def test_greedy_chain_picks_the_argmax_every_step(tiny: Model) -> None:
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        batch = ctx.new_batch()
        prompt = tiny.tokenize(PROMPTS[0])
        prefill(ctx, prompt, 0, batch)
        chain = SamplerChain([Sampler.greedy()])
        pos = len(prompt)
        for _ in range(24):
            expected = int(np.argmax(ctx.logits()))
            tok = chain.sample(ctx)
            assert tok == expected
            batch.clear()
            batch.add(tok, pos, 0, logits=True)
            pos += 1
            ctx.decode(batch)


def test_greedy_is_stable_across_runs_and_threads(tiny: Model) -> None:
    prompt = tiny.tokenize(PROMPTS[1])
    results = []
    for threads in (1, 2, 4, 1):
        with Context(tiny, n_ctx=256, n_threads=threads) as ctx:
            results.append(greedy_argmax(ctx, prompt, 32))
    assert all(r == results[0] for r in results)


def test_four_sequences_in_one_batch_match_each_alone(tiny: Model) -> None:
    prompts = [tiny.tokenize(p) for p in PROMPTS]
    alone_logits, alone_tokens = [], []
    for p in prompts:
        with Context(tiny, n_ctx=256, n_threads=2) as ctx:
            prefill(ctx, p)
            alone_logits.append(ctx.logits_copy())
        with Context(tiny, n_ctx=256, n_threads=2) as ctx:
            alone_tokens.append(greedy_argmax(ctx, p, 16))

    with Context(tiny, n_ctx=1024, n_seq_max=4, n_threads=2) as ctx:
        batch = ctx.new_batch()
        last_index = []
        for s, p in enumerate(prompts):
            sl = batch.add_many(p, 0, s)
            last_index.append(sl.stop - 1)
        ctx.decode(batch)
        for s in range(4):
            np.testing.assert_allclose(ctx.logits(last_index[s]), alone_logits[s], rtol=1e-4, atol=1e-4)
        # continue all four greedily, one decode per step
        outs = [[] for _ in range(4)]
        pos = [len(p) for p in prompts]
        rows = last_index
        for _ in range(16):
            toks = [int(np.argmax(ctx.logits(rows[s]))) for s in range(4)]
            batch.clear()
            for s in range(4):
                outs[s].append(toks[s])
                batch.add(toks[s], pos[s], s, logits=True)
                pos[s] += 1
            rows = [0, 1, 2, 3]
            ctx.decode(batch)
        assert outs == alone_tokens


def test_all_logits_view(tiny: Model) -> None:
    with Context(tiny, n_ctx=128, n_threads=2) as ctx:
        batch = ctx.new_batch()
        toks = tiny.tokenize("abcdef")
        batch.add_many(toks, 0, logits=True)
        ctx.decode(batch)
        allv = ctx.all_logits()
        assert allv.shape == (len(toks), tiny.n_vocab)
        np.testing.assert_array_equal(allv[-1], ctx.logits(-1))
        np.testing.assert_array_equal(allv[2], ctx.logits(2))


def test_fork_prefix_with_seq_cp_matches_independent(tiny: Model) -> None:
    prefix = list(tiny.tokenize("Shared prefix of the story"))
    suffixes = [list(tiny.tokenize(s, add_special=False)) for s in (" one", " two two", " three!")]
    expected = []
    for suf in suffixes:
        with Context(tiny, n_ctx=256, n_threads=2) as ctx:
            expected.append(greedy_argmax(ctx, prefix + suf, 8))

    with Context(tiny, n_ctx=512, n_seq_max=4, n_threads=2) as ctx:
        batch = ctx.new_batch()
        batch.add_many(prefix, 0, 0, logits=False)
        ctx.decode(batch)
        for s in (1, 2, 3):
            ctx.seq_cp(0, s)
        assert ctx.seq_pos_max(2) == len(prefix) - 1
        batch.clear()
        rows = []
        for s, suf in zip((1, 2, 3), suffixes):
            sl = batch.add_many(suf, len(prefix), s)
            rows.append(sl.stop - 1)
        ctx.decode(batch)
        outs = [[] for _ in suffixes]
        pos = [len(prefix) + len(s) for s in suffixes]
        for step in range(8):
            toks = [int(np.argmax(ctx.logits(r))) for r in rows]
            batch.clear()
            for k, s in enumerate((1, 2, 3)):
                outs[k].append(toks[k])
                batch.add(toks[k], pos[k], s, logits=True)
                pos[k] += 1
            rows = [0, 1, 2]
            ctx.decode(batch)
        assert outs == expected


@pytest.mark.parametrize("unified", [True, False])
def test_memory_operations(tiny: Model, unified: bool) -> None:
    with Context(tiny, n_ctx=256, n_seq_max=2, n_threads=2, kv_unified=unified) as ctx:
        toks = tiny.tokenize("memory operations test")
        prefill(ctx, toks)
        n = len(toks)
        assert (ctx.seq_pos_min(0), ctx.seq_pos_max(0)) == (0, n - 1)
        assert ctx.seq_pos_max(1) == -1
        assert ctx.can_shift
        ctx.seq_cp(0, 1)
        assert ctx.seq_pos_max(1) == n - 1
        assert ctx.seq_rm(0, n - 2, -1)
        assert ctx.seq_pos_max(0) == n - 3
        ctx.seq_add(1, 0, -1, 5)
        assert (ctx.seq_pos_min(1), ctx.seq_pos_max(1)) == (5, n + 4)
        ctx.seq_div(1, 0, -1, 2)
        assert ctx.seq_pos_max(1) == (n + 4) // 2
        if unified:  # with one stream per sequence, seq_keep leaves the other streams alone
            ctx.seq_keep(1)
            assert ctx.seq_pos_max(0) == -1
        ctx.clear()
        assert ctx.seq_pos_max(1) == -1


def test_rewind_and_regenerate_is_identical(tiny: Model) -> None:
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        prompt = tiny.tokenize(PROMPTS[3])
        first = greedy_argmax(ctx, prompt, 10)
        ctx.seq_rm(0, len(prompt), -1)
        batch = ctx.new_batch()
        batch.add(int(prompt[-1]), len(prompt) - 1, 0, logits=True)
        ctx.seq_rm(0, len(prompt) - 1, -1)
        ctx.decode(batch)
        again = []
        pos = len(prompt)
        for _ in range(10):
            tok = int(np.argmax(ctx.logits()))
            again.append(tok)
            batch.clear()
            batch.add(tok, pos, 0, logits=True)
            pos += 1
            ctx.decode(batch)
        assert again == first


def test_set_n_threads_and_perf(tiny: Model) -> None:
    with Context(tiny, n_ctx=128, n_threads=1) as ctx:
        ctx.set_n_threads(2, 3)
        assert (ctx.n_threads, ctx.n_threads_batch) == (2, 3)
        prefill(ctx, tiny.tokenize("perf"))
        perf = ctx.perf()
        assert perf["n_p_eval"] >= 1
        with pytest.raises(ValueError):
            ctx.set_n_threads(0)




@pytest.mark.skipif(have_cc() is None, reason="no C compiler")
@pytest.mark.parametrize("preset_path", ["tiny_path", "small_path"])
def test_greedy_equals_native_llama_cpp(preset_path: str, request, tmp_path: Path) -> None:
    """A C program linked against the same libllama gives the same greedy tokens."""
    model_path = request.getfixturevalue(preset_path)
    prompt, n = "Native and Python agree", 40
    native = run_greedy_reference(build_greedy_reference(tmp_path), model_path, prompt, n)
    with Model(model_path) as model, Context(model, n_ctx=512, n_batch=512, n_threads=2) as ctx:
        ours = generate(ctx, SamplerChain([Sampler.greedy()]), model.tokenize(prompt), n)
    assert ours == native


def test_embedding_batch_decodes(tiny: Model) -> None:
    from cortex_llama import Batch

    with Context(tiny, n_ctx=128, n_threads=2) as ctx:
        b = Batch(4, embd=tiny.n_embd)
        rng = np.random.default_rng(0)
        for pos in range(3):
            b.add_embd(rng.standard_normal(tiny.n_embd), pos, 0, logits=pos == 2)
        ctx.decode(b)
        assert np.isfinite(ctx.logits()).all()
        with pytest.raises(ValueError, match="shape"):
            b.add_embd(np.zeros(3), 3)
        with pytest.raises(ValueError, match="embedding batch"):
            b.add(1, 3)
        wrong = Batch(2, embd=tiny.n_embd + 1)
        wrong.add_embd(np.zeros(tiny.n_embd + 1), 0)
        with pytest.raises(ValueError, match="n_embd"):
            ctx.decode(wrong)


def test_threadpool_and_openmp_paths_agree(tiny: Model) -> None:
    """Contexts with their own polling threadpool (default) and without give the same tokens."""
    prompt = tiny.tokenize(PROMPTS[2] + " and more")
    outs = []
    for poll in (50, 0, None):
        with Context(tiny, n_ctx=256, n_threads=2, poll=poll) as ctx:
            outs.append(greedy_argmax(ctx, prompt, 24))
            ctx.set_n_threads(1, 2)  # rebuilds the pools
            ctx.clear()
            outs.append(greedy_argmax(ctx, prompt, 24))
    assert all(o == outs[0] for o in outs)
    with pytest.raises(ValueError, match="poll"):
        Context(tiny, poll=101)


def test_decode_one_matches_batches(tiny: Model) -> None:
    prompt = tiny.tokenize(PROMPTS[1])
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        expected = greedy_argmax(ctx, prompt, 16)
    with Context(tiny, n_ctx=256, n_seq_max=2, n_threads=2) as ctx:
        prefill(ctx, prompt, seq_id=1)
        out, pos = [], len(prompt)
        for _ in range(16):
            tok = int(np.argmax(ctx.logits()))
            out.append(tok)
            ctx.decode_one(tok, pos, 1)
            pos += 1
        assert out == expected
        for bad in [(512, 0, 0), (-1, 0, 0), (5, -1, 0), (5, 0, 2)]:
            with pytest.raises(ValueError):
                ctx.decode_one(*bad)
