"""The continuous-batching engine behind LLM: concurrency, KV pressure, failures,
prefix reuse, on a synthetic model and a quantized one. Every wait has a timeout."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cortex_llama import (LLM, ClosedError, Completion, GenerationParams, GrammarError, PySampler,
                          QueueFullError, Request, Sampler, SamplerChain)
from cortex_llama.llm import FINISH_CANCELLED, FINISH_LENGTH

from .helpers import same_greedy

WAIT = 120  # seconds: a bug fails the test instead of hanging it

PROMPTS = ["Hello world", "The quick brown fox jumps over", "a", "Once upon a time, in a land far",
           "zz top", "1 2 3 4 5 6 7 8", "lorem ipsum dolor sit amet", "q"]
LENGTHS = [20, 7, 30, 12, 25, 3, 16, 9]


def _greedy(n: int, **kw: Any) -> GenerationParams:
    return GenerationParams(temperature=0, max_tokens=n, **kw)


@pytest.fixture(scope="module", params=["small", "small_q4"])
def model_path(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_path")


@pytest.fixture(scope="module")
def llm(model_path: Path):
    with LLM(model_path, context_size=2048, threads=2, n_seq_max=8) as m:
        yield m


def _same(path: Any, got: Completion, solo: Completion) -> bool:
    """Greedy output equal to running alone (see helpers.same_greedy: quantized
    models are compared over their first tokens, with 8-bit activation rounding
    in mind)."""
    if "q4" in str(path).lower():
        return same_greedy(got, solo, gap=0.15, first=8)
    # f32: a prefix reused from cells computed in another step's batch drifts the
    # logprobs a little further each token: measured, a 3.6e-3 near tie flipped at
    # token 24 of 25 (1 run in 5), past same_greedy's default 2e-3
    return same_greedy(got, solo, gap=1e-2)


def _solo(llm: LLM, prompt: Any, params: GenerationParams) -> Completion:
    """The request run alone, with the top-2 logprobs that same_greedy needs."""
    with LLM(llm.config.model_path, context_size=2048, threads=2, n_seq_max=8) as fresh:
        return fresh.submit(prompt, params, logprobs=2).result(WAIT)


def _solos(llm: LLM, items: list[tuple[Any, GenerationParams]]) -> tuple[list[Completion], int]:
    """Each item run alone on a fresh LLM; also the decodes that took in all."""
    with LLM(llm.config.model_path, context_size=2048, threads=2, n_seq_max=8) as fresh:
        out = [fresh.submit(p, g, logprobs=2).result(WAIT) for p, g in items]
        return out, int(fresh.metrics()["decodes_total"])


def _wait_until(pred: Any, what: str) -> None:
    end = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- concurrency ---------------------------------------------------------------------
def test_threads_share_decodes_and_equal_solo(llm: LLM) -> None:
    items = [(p, _greedy(n, stop=["\n\n\n"] if i % 3 == 0 else ())) for i, (p, n) in
             enumerate(zip(PROMPTS, LENGTHS))]
    solo, solo_decodes = _solos(llm, items)
    before = llm.metrics()
    results: dict[int, Completion] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            time.sleep(0.004 * i)  # staggered arrivals: late ones join running batches
            results[i] = llm.complete(*items[i])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors and len(results) == len(items)
    for i, s in enumerate(solo):
        assert _same(llm.config.model_path, results[i], s), (i, results[i].tokens, s.tokens)
    after = llm.metrics()
    decodes = after["decodes_total"] - before["decodes_total"]
    assert decodes < solo_decodes
    assert after["batched_decodes_total"] > before["batched_decodes_total"]
    assert after["requests_finished"] - before["requests_finished"] == len(items)


def test_asyncio_gather_of_acomplete_and_astream_equals_solo(llm: LLM) -> None:
    items = [(p, _greedy(n)) for p, n in zip(PROMPTS[:6], LENGTHS[:6])]
    solo, _ = _solos(llm, items)

    async def one(i: int) -> Completion:
        await asyncio.sleep(0.003 * i)
        prompt, params = items[i]
        if i % 2:
            stream = llm.astream(prompt, params)
            text = "".join([d async for d in stream])
            c = await stream.request.aresult()
            assert text == c.text
            return c
        return await llm.acomplete(prompt, params)

    async def main() -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(items)))), WAIT)

    out = asyncio.run(main())
    for i, (r, s) in enumerate(zip(out, solo)):
        assert _same(llm.config.model_path, r, s), (i, r.tokens, s.tokens)


def test_sync_call_inside_a_running_event_loop(llm: LLM) -> None:
    expected = llm.complete("inside a loop", _greedy(5)).tokens

    async def main() -> list[int]:
        return llm.complete("inside a loop", _greedy(5)).tokens  # blocks the loop, no deadlock

    assert asyncio.run(main()) == expected


def test_request_handle(llm: LLM) -> None:
    req = llm.submit("handle", _greedy(6))
    assert isinstance(req, Request) and req.id > 0 and req.prompt_tokens and req.params.max_tokens == 6
    c = req.result(WAIT)
    assert req.done and req.finish_reason == FINISH_LENGTH and req.tokens == c.tokens
    assert c.usage.completion_tokens == 6 and c.usage.prompt_tokens == len(req.prompt_tokens)
    t = c.timings
    assert min(t.queue_ms, t.prompt_ms, t.first_token_ms, t.generation_ms) >= 0
    assert t.first_token_ms >= t.queue_ms
    assert "".join(req) == c.text  # iterating a finished request replays its deltas
    req.cancel()  # no-op once done
    assert req.finish_reason == FINISH_LENGTH

    async def main() -> Completion:
        return await llm.submit("handle", _greedy(6)).aresult()

    assert asyncio.run(main()).tokens == c.tokens


def test_metrics_keys(llm: LLM) -> None:
    m = llm.metrics()
    for key in ("requests_total", "requests_finished", "requests_failed", "requests_cancelled",
                "requests_running", "queue_depth", "slots_busy", "slots_total", "prompt_tokens_total",
                "prompt_tokens_reused", "generated_tokens_total", "decodes_total", "decode_tokens_total",
                "batched_decodes_total", "kv_cells_used", "kv_cells_total"):
        assert isinstance(m[key], float), key
    # a KV stream of context_size cells per slot (ModelConfig.kv_unified=False)
    assert m["slots_total"] == 8 and m["kv_cells_per_request"] == 2048
    assert m["kv_cells_total"] == 8 * 2048


# -- KV pressure ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "small_q4"])
def test_kv_pressure_preempts_and_loses_nothing(which: str, request: pytest.FixtureRequest) -> None:
    """(Unified cache) 4 requests of ~10 + 100 tokens in a 256-cell cache: the youngest are preempted
    and resumed; every request ends with its full, unchanged output (the issue's
    generate() that used to raise KVCacheFullError and return nothing)."""
    path = request.getfixturevalue(f"{which}_path")
    prompts = ["Hello world, this is", "The quick brown fox", "Once upon a time", "zz top and more"]
    p = _greedy(100)
    with LLM(path, context_size=256, threads=2, n_seq_max=4, kv_unified=True) as fresh:
        solo = [fresh.submit(x, p, logprobs=2).result(WAIT) for x in prompts]
    with LLM(path, context_size=256, threads=2, n_seq_max=4, kv_unified=True) as m:
        out = m.generate(prompts, p)
        metrics = m.metrics()
    assert len(out) == 4
    assert metrics["preemptions_total"] >= 1
    for c, s in zip(out, solo):
        assert _same(path, c, s), (c.tokens, s.tokens)
        if c.tokens == s.tokens:
            assert c.finish_reason == s.finish_reason


@pytest.mark.parametrize("which", ["tiny", "small_q4"])
def test_per_slot_streams_never_preempt(which: str, request: pytest.FixtureRequest) -> None:
    """(A KV stream per slot, the default) the same 4 requests with 256 cells per
    slot: nobody is preempted, each equals its solo run on a fresh LLM."""
    path = request.getfixturevalue(f"{which}_path")
    prompts = ["Hello world, this is", "The quick brown fox", "Once upon a time", "zz top and more"]
    p = _greedy(100)
    with LLM(path, context_size=256, threads=2, n_seq_max=4) as m:
        out = m.generate(prompts, p)
        metrics = m.metrics()
    assert metrics["preemptions_total"] == 0 and metrics["kv_cells_total"] == 4 * 256
    for c, x in zip(out, prompts):
        with LLM(path, context_size=256, threads=2, n_seq_max=4) as fresh:
            s = fresh.submit(x, p, logprobs=2).result(WAIT)
        assert _same(path, c, s), (c.tokens, s.tokens)


def _no_eog(m: LLM) -> dict[int, float]:
    v = m.model.vocab
    return {t: float("-inf") for t in (v.eos, v.eot) if t is not None}


def test_one_request_may_use_the_whole_context(tiny_path: Path) -> None:
    """The issue's generate([p]) vs complete(p) at the limit: now one code path."""
    with LLM(tiny_path, context_size=256, threads=2, n_seq_max=4) as m:
        prompt = m.tokenize("the context limit " * 12)
        a = m.complete(prompt, _greedy(1000, logit_bias=_no_eog(m)))
        b = m.generate([prompt], _greedy(1000, logit_bias=_no_eog(m)))[0]
        assert a.finish_reason == b.finish_reason == FINISH_LENGTH
        assert len(a.tokens) == 256 - len(prompt) + 1  # the last one needs no KV cell
        assert a.tokens == b.tokens
        with pytest.raises(ValueError, match="does not fit the context of 256"):
            m.submit([5] * 256)
        m.submit([5] * 255, max_tokens=2).result(WAIT)  # prompt + 1 fits


# -- failure isolation ---------------------------------------------------------------------
def test_cancel_one_stream_leaves_the_others_identical(llm: LLM) -> None:
    items = [(p, _greedy(24)) for p in PROMPTS[:4]]
    solo, _ = _solos(llm, items)
    before = llm.metrics()
    streams = [llm.stream(p, g) for p, g in items]
    victim = streams[1]
    got = next(victim)
    victim.close()
    texts = {i: "".join(s) for i, s in enumerate(streams) if i != 1}
    assert victim.request.result(WAIT).text.startswith(got)
    assert victim.request.finish_reason == FINISH_CANCELLED
    for i, text in texts.items():
        c = streams[i].request.result(WAIT)
        assert text == c.text and _same(llm.config.model_path, c, solo[i]), i
    assert llm.metrics()["requests_cancelled"] == before["requests_cancelled"] + 1


def test_raising_pysampler_fails_only_its_request(llm: LLM) -> None:
    calls = []

    def boom(cands: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("sampler exploded")

    chain = SamplerChain([PySampler(boom), Sampler.greedy()])
    expected = _solo(llm, "bystander", _greedy(12))
    bad = llm.submit("victim", _greedy(12), sampler=chain)
    good = llm.submit("bystander", _greedy(12))
    with pytest.raises(RuntimeError, match="sampler exploded"):
        bad.result(WAIT)
    with pytest.raises(RuntimeError, match="sampler exploded"):
        list(bad)  # the stream re-raises after its deltas
    assert _same(llm.config.model_path, good.result(WAIT), expected)
    assert llm.complete("after", _greedy(3)).tokens  # the engine still serves


def test_grammar_that_rejects_everything_fails_only_its_request(llm: LLM) -> None:
    ban_all = {t: float("-inf") for t in range(llm.model.n_vocab)}
    bad = llm.submit("grammar", _greedy(5, grammar='root ::= "a"+', logit_bias=ban_all))
    good = llm.submit("grammar", _greedy(5))
    with pytest.raises(GrammarError, match="allows no token"):
        bad.result(WAIT)
    assert len(good.result(WAIT).tokens) == 5


def test_close_with_requests_in_flight_raises_closed_error(tiny_path: Path) -> None:
    m = LLM(tiny_path, context_size=512, threads=2, n_seq_max=2)
    p = _greedy(400, logit_bias=_no_eog(m))
    stream = m.stream("streaming", p)
    next(stream)
    reqs = [m.submit(f"in flight {i}", p) for i in range(5)]  # 1 runs beside it, 4 wait
    m.close()
    for r in reqs:
        with pytest.raises(ClosedError):
            r.result(WAIT)
    with pytest.raises(ClosedError):
        list(stream)
    with pytest.raises(ClosedError, match="not loaded"):
        m.submit("after")


def test_abandoned_stream_is_collected_and_frees_its_slot(llm: LLM) -> None:
    stream = llm.stream("abandoned", _greedy(1000))
    next(stream)
    req = stream.request
    del stream
    gc.collect()
    _wait_until(lambda: req.done, "the abandoned request to end")
    assert req.finish_reason == FINISH_CANCELLED
    _wait_until(lambda: llm.metrics()["slots_busy"] == 0, "the slot to be freed")

    async def leave_early() -> Request:
        s = llm.astream("abandoned async", _greedy(1000))
        async for _ in s:
            break
        return s.request

    req = asyncio.run(leave_early())
    gc.collect()
    _wait_until(lambda: req.done, "the abandoned async request to end")
    assert req.finish_reason == FINISH_CANCELLED


def test_task_cancellation_cancels_the_request(llm: LLM) -> None:
    async def main() -> Request:
        req = llm.submit("task cancel", _greedy(1000))
        task = asyncio.ensure_future(req.aresult())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return req

    req = asyncio.run(main())
    _wait_until(lambda: req.done, "the cancelled request to end")
    assert req.finish_reason == FINISH_CANCELLED


# -- prefix reuse -------------------------------------------------------------------------------
def test_prefix_reuse_counts_and_equals_a_fresh_llm(llm: LLM) -> None:
    base = "A long shared prefix that the slots should keep around for the next requests, " * 3
    n_base = len(llm.tokenize(base))
    llm.complete(base + "first", _greedy(4))
    before = llm.metrics()
    c = llm.complete(base + "second question", _greedy(8))
    after = llm.metrics()
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] >= n_base - 1
    assert c.usage.cached_tokens >= n_base - 1
    assert _same(llm.config.model_path, c, _solo(llm, base + "second question", _greedy(8)))
    # generate() keeps (and uses) the prefix cache too
    before = llm.metrics()
    g = llm.generate([base + "third", base + "fourth"], _greedy(8))
    assert llm.metrics()["prompt_tokens_reused"] - before["prompt_tokens_reused"] >= n_base - 1
    before = llm.metrics()
    llm.complete(base + "fifth", _greedy(2))
    assert llm.metrics()["prompt_tokens_reused"] - before["prompt_tokens_reused"] >= n_base - 1
    assert _same(llm.config.model_path, g[1], _solo(llm, base + "fourth", _greedy(8)))


def test_prefix_of_a_running_request_is_shared_not_recomputed(llm: LLM) -> None:
    system = "You are a helpful assistant that answers in one short sentence, always. " * 3
    n_sys = len(llm.tokenize(system))
    first = llm.submit(system + "Question one?", _greedy(40))
    _wait_until(lambda: len(first.tokens) > 0, "the first request to start generating")
    before = llm.metrics()
    second = llm.submit(system + "And question two?", _greedy(10))
    c = second.result(WAIT)
    after = llm.metrics()
    first.result(WAIT)
    if after["prefix_copies_total"] > before["prefix_copies_total"]:
        assert c.usage.cached_tokens >= n_sys - 1
    else:  # the first request ended before the second was admitted: its slot served it
        assert first.done
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] >= n_sys - 1
    assert _same(llm.config.model_path, c, _solo(llm, system + "And question two?", _greedy(10)))


# -- bad input raises in the caller ------------------------------------------------------------
def test_bad_input_raises_before_queueing(llm: LLM) -> None:
    before = llm.metrics()["requests_total"]
    with pytest.raises(ValueError, match="empty"):
        llm.submit("")
    with pytest.raises(ValueError, match="empty"):
        llm.submit([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.submit([llm.model.n_vocab + 5])
    with pytest.raises(ValueError, match="does not fit the context"):
        llm.submit("word " * 3000)
    with pytest.raises(ValueError, match="GenerationParams.temperature"):
        llm.submit("x", temperature=-1)
    with pytest.raises(TypeError, match="unknown GenerationParams"):
        llm.submit("x", temprature=0.5)
    with pytest.raises(GrammarError):
        llm.submit("x", grammar="root ::= [0-9")
    with pytest.raises(GrammarError):
        llm.submit("x", json_schema={"type": "no-such-type"})
    with pytest.raises(TypeError, match="SamplerChain"):
        llm.submit("x", sampler="greedy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of prompts"):
        llm.generate("one prompt")  # type: ignore[arg-type]
    assert llm.metrics()["requests_total"] == before


def test_queue_full(tiny_path: Path) -> None:
    with LLM(tiny_path, context_size=512, threads=2, n_seq_max=1, max_queue=1) as m:
        running = m.submit("long one", _greedy(400, logit_bias=_no_eog(m)))
        _wait_until(lambda: m.metrics()["requests_running"] == 1, "the first request to start")
        waiting = m.submit("waits", _greedy(2))
        with pytest.raises(QueueFullError, match="max_queue=1"):
            m.submit("one too many")
        running.cancel()
        assert waiting.result(WAIT).tokens
        assert running.result(WAIT).finish_reason == FINISH_CANCELLED


def test_prompt_progress_follows_the_prefill(small_q4_path: Path) -> None:
    """GenerationParams.return_progress: Request.progress starts at the cached
    tokens and grows by the chunks the engine evaluates, up to the prompt."""
    with LLM(small_q4_path, threads=2, n_seq_max=1, context_size=512, batch_size=16) as llm:
        prompt = list(range(10, 70))

        async def run() -> list[tuple[int, int, int]]:
            req = llm.submit(prompt, temperature=0, max_tokens=2, return_progress=True)
            event = asyncio.Event()
            req.add_waker((asyncio.get_running_loop(), event.set))
            wakes = 0
            while not req.done:
                await event.wait()
                event.clear()
                wakes += 1
            assert wakes >= 1 and req.progress == req.progress_log[-1]
            return [(p.total, p.cache, p.processed) for p in req.progress_log]

        seen = asyncio.run(run())
        assert seen[0] == (60, 0, 0) and seen[-1] == (60, 0, 60)
        assert [s[2] for s in seen] == sorted(s[2] for s in seen) and len(seen) >= 4  # 60 tokens, 16 a step
        assert llm.submit(prompt, max_tokens=1).progress is None  # only when asked for
