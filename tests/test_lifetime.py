"""Ownership: objects are freed, close is idempotent, parents close children safely."""

from __future__ import annotations

import gc
import resource
import weakref
from pathlib import Path

import pytest

from cortex_llama import Batch, ClosedError, Context, Model, Sampler, SamplerChain

from .helpers import prefill


def test_objects_are_freed_by_gc(tiny_path: Path) -> None:
    model = Model(tiny_path)
    ctx = Context(model, n_ctx=128, n_threads=1)
    chain = SamplerChain([Sampler.greedy()])
    refs = [weakref.ref(o) for o in (model, ctx, chain)]
    del model, ctx, chain
    gc.collect()
    assert all(r() is None for r in refs)


def test_context_keeps_its_model_alive(tiny_path: Path) -> None:
    model = Model(tiny_path)
    ctx = Context(model, n_ctx=128, n_threads=1)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is not None
    prefill(ctx, ctx.model.tokenize("still alive"))
    del ctx
    gc.collect()
    assert ref() is None


def test_double_close_and_use_after_close(tiny_path: Path) -> None:
    model = Model(tiny_path)
    ctx = Context(model, n_ctx=128, n_threads=1)
    ctx.close()
    ctx.close()
    for call in (lambda: ctx.decode(Batch(4)), lambda: ctx.logits(), lambda: ctx.n_ctx,
                 lambda: ctx.seq_rm(0), lambda: ctx.state_bytes()):
        with pytest.raises(ClosedError):
            call()
    model.close()
    model.close()
    with pytest.raises(ClosedError):
        Context(model)


def test_closing_a_model_with_live_contexts_is_safe(tiny_path: Path) -> None:
    model = Model(tiny_path)
    contexts = [Context(model, n_ctx=128, n_threads=1) for _ in range(3)]
    grammar = Sampler.grammar(model, "root ::= [a-z]")
    model.close()
    assert all(c.closed for c in contexts) and grammar.closed
    with pytest.raises(ClosedError):
        prefill(contexts[0], [1, 2, 3])
    with pytest.raises(ClosedError):
        model.vocab.n_tokens


def test_context_managers(tiny_path: Path) -> None:
    with Model(tiny_path) as model:
        with Context(model, n_ctx=128, n_threads=1) as ctx:
            pass
        assert ctx.closed and not model.closed
    assert model.closed


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


@pytest.mark.slow
def test_200_load_free_cycles_keep_rss_bounded(small_path: Path) -> None:
    def cycle() -> None:
        with Model(small_path) as m, Context(m, n_ctx=128, n_threads=1) as c:
            prefill(c, m.tokenize("x"))

    for _ in range(20):
        cycle()
    gc.collect()
    base = _rss_mib()
    for _ in range(200):
        cycle()
    gc.collect()
    grown = _rss_mib() - base
    assert grown < 40, f"RSS grew by {grown:.1f} MiB over 200 cycles"


def test_closing_the_model_closes_chains_holding_its_grammar(tiny_path: Path) -> None:
    model = Model(tiny_path)
    chain = SamplerChain([Sampler.grammar(model, "root ::= [0-9]+"), Sampler.greedy()])
    model.close()
    assert chain.closed  # the grammar pointed into the freed vocab
    with pytest.raises(ClosedError):
        len(chain)


def test_python_sampler_teardown_in_any_order(tiny: Model) -> None:
    from cortex_llama import PySampler

    for _ in range(50):
        lone = PySampler(lambda c: None)
        chain = SamplerChain([PySampler(lambda c: setattr(c, "selected", 0), selects=True)])
        del lone, chain
    gc.collect()
