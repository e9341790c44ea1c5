"""Samplers and chains on real logits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_llama import (Candidates, ClosedError, Context, GrammarError, Model, PySampler, Sampler,
                          SamplerChain)
from cortex_llama.sampling import GreedyPick, biased_argmax

from .helpers import generate, prefill


@pytest.fixture()
def primed(tiny: Model):
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        prefill(ctx, tiny.tokenize("Sampling test prompt"))
        yield ctx


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_top_k_1_equals_greedy(tiny: Model, primed: Context) -> None:
    greedy = SamplerChain([Sampler.greedy()]).sample(primed)
    topk = SamplerChain([Sampler.top_k(1), Sampler.dist(123)]).sample(primed)
    assert greedy == topk == int(np.argmax(primed.logits()))


def test_seeded_dist_is_reproducible(tiny: Model) -> None:
    runs = []
    for seed in (7, 7, 8):
        with Context(tiny, n_ctx=256, n_threads=2) as ctx:
            chain = SamplerChain([Sampler.temp(1.5), Sampler.dist(seed)])
            runs.append(generate(ctx, chain, tiny.tokenize("seeded"), 24))
    assert runs[0] == runs[1] != runs[2]
    assert SamplerChain([Sampler.dist(42)]).samplers[0].seed == 42


@pytest.mark.parametrize("kind,value", [("top_p", 0.5), ("min_p", 0.2)])
def test_nucleus_samplers_stay_in_the_nucleus(primed: Context, kind: str, value: float) -> None:
    p = _probs(primed.logits_copy())
    order = np.argsort(-p)
    if kind == "top_p":
        cum = np.cumsum(p[order])
        k = int(np.searchsorted(cum, value) + 1)
        allowed = set(order[:k].tolist())
        filt = Sampler.top_p(value)
    else:
        allowed = set(np.nonzero(p >= value * p.max())[0].tolist())
        filt = Sampler.min_p(value)
    chain = SamplerChain([filt, Sampler.dist(1)])
    seen = set()
    for _ in range(300):
        seen.add(chain.sample(primed))
    assert seen <= allowed
    assert len(seen) >= 1


def test_penalties_change_the_pick(tiny: Model) -> None:
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        prompt = tiny.tokenize("repeat repeat")
        prefill(ctx, prompt)
        best = int(np.argmax(ctx.logits()))
        plain = SamplerChain([Sampler.greedy()])
        penal = SamplerChain([Sampler.penalties(tiny.n_vocab, 64, repeat=1e6), Sampler.greedy()])
        penal.accept(best)
        assert plain.sample(ctx) == best
        assert penal.sample(ctx) != best


def test_logit_bias_forces_a_token(primed: Context, tiny: Model) -> None:
    chain = SamplerChain([Sampler.logit_bias(tiny.n_vocab, {300: 1000.0}), Sampler.greedy()])
    assert chain.sample(primed) == 300
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler.logit_bias(tiny.n_vocab, {9999: 1.0})


def test_digits_grammar_yields_only_digits(tiny: Model) -> None:
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        chain = SamplerChain([Sampler.grammar(tiny, 'root ::= [0-9]+'), Sampler.temp(1.0),
                              Sampler.dist(5)])
        toks = generate(ctx, chain, tiny.tokenize("Digits:"), 12)
        text = tiny.detokenize(toks)
        assert text and text.isdigit(), text


def test_invalid_grammar_carries_the_parse_message(tiny: Model) -> None:
    with pytest.raises(GrammarError) as info:
        Sampler.grammar(tiny, "root ::= [0-9")
    assert "pars" in str(info.value).lower()


def test_python_sampler_choice_is_honoured(primed: Context, tiny: Model) -> None:
    def pick_300(c: Candidates) -> None:
        c.selected = int(np.nonzero(c.ids == 300)[0][0])

    chain = SamplerChain([PySampler(pick_300, selects=True, name="pick-300")])
    assert chain.sample(primed) == 300


def test_python_filter_then_greedy(primed: Context) -> None:
    def ban_best(c: Candidates) -> None:
        c.logits[np.argmax(c.logits)] = -np.inf

    best = int(np.argmax(primed.logits()))
    chain = SamplerChain([PySampler(ban_best), Sampler.greedy()])
    assert chain.sample(primed) != best


def test_python_sampler_exception_is_reraised(primed: Context) -> None:
    def broken(c: Candidates) -> None:
        raise KeyError("broken sampler")

    chain = SamplerChain([PySampler(broken, selects=True)])
    with pytest.raises(KeyError, match="broken sampler"):
        chain.sample(primed)
    # and the chain keeps working afterwards
    ok = SamplerChain([PySampler(lambda c: setattr(c, "selected", 0), selects=True)])
    ok.sample(primed)


def test_chain_without_selector_is_refused(primed: Context) -> None:
    with pytest.raises(ValueError, match="selecting"):
        SamplerChain([Sampler.top_k(5)]).sample(primed)


def test_sampler_moves_into_chain_once(primed: Context) -> None:
    s = Sampler.greedy()
    chain = SamplerChain([s])
    with pytest.raises(ValueError, match="already belongs"):
        SamplerChain([s])
    chain.close()
    assert s.closed
    with pytest.raises(ClosedError):
        chain.sample(primed)
    s.close()  # harmless: the chain already freed it


def test_clone_and_reset(tiny: Model, primed: Context) -> None:
    chain = SamplerChain([Sampler.top_k(20), Sampler.dist(9)])
    twin = chain.clone()
    a = [chain.sample(primed) for _ in range(10)]
    b = [twin.sample(primed) for _ in range(10)]
    assert a == b
    chain.reset()
    assert len(chain) == 2


def test_every_builtin_sampler_constructs(tiny: Model, primed: Context) -> None:
    n = tiny.n_vocab
    filters = [Sampler.typical(0.9), Sampler.temp_ext(0.8, 0.5, 1.0), Sampler.xtc(0.5, 0.1, seed=1),
               Sampler.top_n_sigma(2.0), Sampler.dry(tiny), Sampler.min_p(0.05),
               Sampler.penalties(n, 32, 1.1, 0.1, 0.1)]
    chain = SamplerChain(filters + [Sampler.dist(3)], perf=True)
    tok = chain.sample(primed)
    assert 0 <= tok < n
    assert chain.perf()["n_sample"] == 1
    for selector in (Sampler.mirostat(n, seed=1), Sampler.mirostat_v2(seed=1)):
        assert 0 <= SamplerChain([selector]).sample(primed) < n
    lazy = Sampler.grammar_lazy(tiny, "root ::= [0-9]+", trigger_patterns=["x"])
    assert lazy.name == "grammar-lazy"
    assert Sampler.infill(tiny).name == "infill"


def test_from_params(tiny: Model, primed: Context) -> None:
    greedy = SamplerChain.from_params(tiny, temperature=0)
    assert greedy.sample(primed) == int(np.argmax(primed.logits()))
    chain = SamplerChain.from_params(tiny, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05,
                                     repeat_penalty=1.1, seed=1)
    assert [s.name for s in chain.samplers] == ["penalties", "top-k", "top-p", "min-p", "temp", "dist"]
    with pytest.raises(ValueError, match="temperature"):
        SamplerChain.from_params(tiny, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        Sampler.top_p(1.5)


def test_sample_needs_logits(tiny: Model) -> None:
    with Context(tiny, n_ctx=128, n_threads=2) as ctx:
        batch = ctx.new_batch()
        batch.add_many(tiny.tokenize("x y z"), 0, logits=False)
        ctx.decode(batch)
        with pytest.raises(IndexError, match="logits"):
            SamplerChain([Sampler.greedy()]).sample(ctx, 0)


def test_greedy_fast_path_equals_llama_cpp_greedy(small_path) -> None:
    # a chain of just [greedy] takes numpy's argmax; with perf counters on it goes
    # through llama_sampler_sample: both must pick the same tokens every step
    with Model(small_path) as m, Context(m, n_ctx=256, n_threads=2) as ctx:
        prompt = m.tokenize("fast path")
        fast = SamplerChain([Sampler.greedy()])
        slow = SamplerChain([Sampler.greedy()], perf=True)
        assert fast.greedy_pick is not None and slow.greedy_pick is None
        a = generate(ctx, fast, prompt, 48)
        ctx.clear()
        b = generate(ctx, slow, prompt, 48)
        assert a == b
        with pytest.raises(IndexError, match="no logits for output 3"):
            fast.sample(ctx, 3)
        # logit biases (bans and boosts) in front of greedy: still the fast path
        bias = {b[0]: float("-inf"), b[1]: -2.5, int(prompt[-1]): 3.0, 7: 1e-3}
        fast_b = SamplerChain([Sampler.logit_bias(m.n_vocab, bias), Sampler.greedy()])
        slow_b = SamplerChain([Sampler.logit_bias(m.n_vocab, bias), Sampler.greedy()], perf=True)
        assert fast_b.greedy_pick is not None and fast_b.clone().greedy_pick is not None
        ctx.clear()
        c = generate(ctx, fast_b, prompt, 48)
        ctx.clear()
        assert generate(ctx, slow_b, prompt, 48) == c
        assert b[0] not in c and c != a
        # bans only (the lowering-only shortcut): still llama.cpp's picks
        bans = {b[0]: float("-inf"), b[2]: -0.5}
        ctx.clear()
        d = generate(ctx, SamplerChain([Sampler.logit_bias(m.n_vocab, bans), Sampler.greedy()]),
                     prompt, 48)
        ctx.clear()
        slow_bans = SamplerChain([Sampler.logit_bias(m.n_vocab, bans), Sampler.greedy()], perf=True)
        assert generate(ctx, slow_bans, prompt, 48) == d and d != a


_biases = st.lists(st.tuples(st.lists(st.integers(0, 15), min_size=1, max_size=4, unique=True),
                             st.sampled_from([float("-inf"), -3.0, -0.25, -1e-7, 0.0, 1e-7, 0.5])),
                   max_size=3)


@settings(max_examples=300, deadline=None)
@given(logits=st.lists(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]), min_size=16, max_size=16),
       biases=_biases)
def test_greedy_pick_equals_adding_the_biases(logits: list[float], biases) -> None:
    # ties are frequent here: the pick must be the first maximum of the biased row
    row = np.array(logits, dtype=np.float32)
    pairs = [(np.array(ids, dtype=np.int64), np.full(len(ids), v, dtype=np.float32))
             for ids, v in biases]
    expected = row.copy()
    for ids, values in pairs:
        expected[ids] += values
    assert GreedyPick(pairs)(row) == int(expected.argmax()) == biased_argmax(row, pairs)
    assert row.tolist() == [np.float32(x) for x in logits]  # left as it was


def test_penalty_window_minus_one_is_not_silently_off(tiny: Model) -> None:
    # llama.cpp clamps last_n=-1 to 0, which disables the penalties: refuse it
    with pytest.raises(ValueError, match="last_n must be >= 0"):
        Sampler.penalties(tiny.n_vocab, -1, repeat=1.3)
    with pytest.raises(ValueError, match="needs n_ctx"):
        SamplerChain.from_params(tiny, repeat_penalty=1.3, penalty_last_n=-1)
    chain = SamplerChain.from_params(tiny, temperature=0, repeat_penalty=1.3, penalty_last_n=-1, n_ctx=256)
    assert [s.name for s in chain.samplers] == ["penalties", "greedy"]
