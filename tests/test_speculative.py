"""Speculative decoding: llama.cpp's n-gram drafts, verified in the engine's step.

Greedy output with speculation equals greedy output without it up to the
near-tie rule: a verified row comes from a multi-row decode of its sequence,
whose kernels may sum in another order than a one-row decode's (measured on
SmolLM2 Q4_1 in deterministic mode: one flip at a 0.07 logprob tie in 96
tokens). On the synthetic models in deterministic mode the outputs are equal
exactly, and these tests hold them to that. A seeded sampled run draws the
same random numbers in the same order, so it equals the run without
speculation too. The synthetic models repeat themselves under greedy decoding,
which gives the lookup something to draft.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cortex_llama import LLM, Drafter, SpeculationError
from cortex_llama.gen.scheduler import KVOp, Scheduler
from cortex_llama.gen.speculation import DraftPolicy, StepCost, best_length
from cortex_llama.testmodel import make_test_model, make_test_projector

from .helpers import cancel_leaves_the_other, eog_ban, same_greedy, schema_run_matches

PROMPTS = [f"Story {i}: " + "the sea and the sky " * (1 + i % 4) for i in range(8)]
#: unigram lookup drafts often on the synthetic models; every match is verified
#: (draft_adaptive=False), so that correctness does not hang on the cost model
SPEC = {"speculative": "ngram", "ngram_size_n": 1, "ngram_size_m": 8, "draft_max": 8, "draft_adaptive": False}


def _runs(path: Path, n_tokens: int, prompts: list[str], *, together: bool, **config: object):
    """Greedy completions of ``prompts`` (EOG banned so that every run is long)."""
    with LLM(path, threads=2, n_seq_max=8, context_size=512, **config) as llm:
        ban = eog_ban(llm)
        kw = dict(temperature=0, max_tokens=n_tokens, logit_bias=ban, logprobs=2)
        if together:
            out = [r.result() for r in [llm.submit(p, **kw) for p in prompts]]
        else:
            out = [llm.complete(p, **kw) for p in prompts]
        return out, llm.metrics()


# -- the drafter (object layer) -----------------------------------------------------------
def test_drafter_looks_up_the_continuation_of_a_repeated_ngram() -> None:
    d = Drafter("ngram-simple", 2, size_n=3, size_m=8)
    history = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 2 + [1, 2], dtype=np.int32)
    assert d.n_max == 8
    assert d.draft(0, history, len(history), 3, 16) == [4, 5, 6, 7, 8, 9, 10, 1]
    assert d.draft(1, history, len(history), 3, 4) == [4, 5, 6, 7]
    assert d.draft(0, history, len(history), 99, 16) == []  # no match
    d.accept(0, 4)
    d.close()
    d.close()


def test_drafter_refuses_bad_settings() -> None:
    with pytest.raises(SpeculationError, match="'draft-simple' needs the draft model's context"):
        Drafter("draft-simple", 1)
    with pytest.raises(SpeculationError, match="unknown speculative type 'eagle'"):
        Drafter("eagle", 1)
    with pytest.raises(SpeculationError, match="size_n=2000 is outside"):
        Drafter("ngram-simple", 1, size_n=2000)
    d = Drafter("ngram-map-k,ngram-mod", 2)
    with pytest.raises(SpeculationError, match=r"sequence 5 is not in \[0, 2\)"):
        d.draft(5, np.zeros(4, np.int32), 4, 1, 4)


@pytest.mark.parametrize("bad, match", [({"speculative": "eagle3"}, "unknown type 'eagle3'"),
                                        ({"speculative": "ngram", "draft_max": 0}, "draft_max=0"),
                                        ({"speculative": "ngram", "draft_min": 9, "draft_max": 4},
                                         "draft_min=9")])
def test_config_errors_name_the_field(tiny_path: Path, bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LLM(tiny_path, **bad)


# -- the adaptive length and the scheduler (pure Python) -------------------------------------
def test_step_cost_fits_base_and_per_row() -> None:
    cost = StepCost()
    assert cost.fit() == (0.4, 0.6)  # the prior, in units of a one-row step
    for rows in (1, 9, 1, 17, 8, 1):
        cost.observe(rows, 0.004 + 0.006 * rows)  # as measured on SmolLM2, 2 cores
    base, per_row = cost.fit()
    assert base == pytest.approx(0.004, rel=1e-6) and per_row == pytest.approx(0.006, rel=1e-6)
    gpu = StepCost()
    for rows in (1, 8, 16):
        gpu.observe(rows, 0.005)  # rows nearly free
    assert gpu.fit()[1] == pytest.approx(0.0, abs=1e-12)


def test_best_length_weighs_acceptance_against_the_rows() -> None:
    one_stream = (0.010, 0.0, 0.006)  # (a step's token, a draft's extra, a row), one stream on a CPU
    assert best_length(0.5, *one_stream, 16) == 0  # half the drafts rejected: no draft pays
    assert best_length(0.7, *one_stream, 16) == 1
    assert 4 <= best_length(0.95, *one_stream, 16) < 16
    assert best_length(1.0, *one_stream, 16) == 16
    eight_streams = (0.004 / 8 + 0.006, 0.004, 0.006)  # a drafted row costs a token, plus a ubatch
    assert best_length(0.95, *eight_streams, 16) == 0
    assert best_length(0.9, 0.010, 0.0, 0.0, 16) == 16  # free rows (a GPU): the whole draft


def test_draft_policy_learns_its_acceptance_and_probes_only_where_drafts_could_pay() -> None:
    cpu = (0.010, 0.0, 0.006)
    p = DraftPolicy(16)
    assert p.chance == pytest.approx(2 / 3) and p.allowed(*cpu) == 1
    for _ in range(6):
        p.update(16, 16)  # copy-heavy: every draft taken
    assert p.chance > 0.95 and p.allowed(*cpu) >= 8
    q = DraftPolicy(16)
    for _ in range(8):
        q.update(2, 0)  # natural text: first tokens rejected
    assert [q.allowed(*cpu) for _ in range(8)] == [0] * 7 + [1]  # a one-token probe every 8 steps
    q.update(1, 0)  # the probe was rejected: the next one waits twice as long
    assert [q.allowed(*cpu) for _ in range(16)] == [0] * 15 + [1]
    q.update(1, 1)  # taken: back to 8
    assert [q.allowed(*cpu) for _ in range(8)] == [0] * 7 + [1]
    r = DraftPolicy(16, prior=(0.3, 2.7))  # recent drafts were rarely taken: it starts pessimistic
    assert r.chance == pytest.approx(0.1) and r.allowed(*cpu) == 0
    assert [r.allowed(*cpu, catch_up=0.5) for _ in range(16)] == [0] * 16  # a draft model 50 tokens behind: no probe
    assert [r.allowed(*cpu, catch_up=0.01) for _ in range(8)].count(1) == 1  # a cheap one: it probes
    crowded = (0.004 / 8 + 0.006, 0.004, 0.006)
    assert [q.allowed(*crowded) for _ in range(16)] == [0] * 16  # no probes where nothing pays
    assert DraftPolicy(16, n_min=4).allowed(*cpu) == 4


class _Req:
    def __init__(self, prompt: list[int]) -> None:
        self.prompt_tokens, self.tokens = prompt, []
        self.cancel_requested, self.pinned_slot, self.lora_key = False, None, ()


@pytest.mark.parametrize("per_slot", [True, False])
def test_drafts_fit_the_budget_and_rejected_cells_are_trimmed(per_slot: bool) -> None:
    s = Scheduler(2, 16, 8, per_slot=per_slot)
    s.queue.extend([_Req([1, 2, 3]), _Req([4, 5, 6])])
    plan = s.plan()
    for span in plan.spans:
        s.committed(span)
    for job in s.jobs:
        s.grow(job, 9)
    a, b = s.jobs
    a.draft, b.draft = [7] * 10, [8] * 10
    plan = s.plan()
    assert sum(sp.n + len(sp.draft) for sp in plan.spans) <= 8  # n_batch
    spans = {sp.job: sp for sp in plan.spans}
    assert len(spans[a].draft) == 6 and spans[b].draft == ()  # the oldest first, then nothing left
    assert a.draft == [] and b.draft == []
    for span in plan.spans:
        s.committed(span)
    s.grow(a, 7)
    s.grow(a, 7)
    s.grow(a, 5)  # two drafted tokens taken, then the model's own
    assert s.verified(spans[a], 2) == [KVOp("trim", a.slot.seq_id, start=6)]
    assert a.slot.cached == [1, 2, 3, 9, 7, 7] and a.pending == 1


def test_a_draft_never_passes_the_slots_capacity() -> None:
    s = Scheduler(1, 8, 64, per_slot=True)
    s.queue.append(_Req([1, 2, 3, 4, 5]))
    for span in s.plan().spans:
        s.committed(span)
    job = s.jobs[0]
    s.grow(job, 6)
    job.draft = [1] * 10
    (span,) = s.plan().spans
    assert span.start + len(span.draft) == 7  # the last cell is position 7


# -- greedy equality ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "small_q4"])
def test_greedy_equals_without_speculation_exactly_in_deterministic_mode(model: str, request) -> None:
    path = request.getfixturevalue(f"{model}_path")
    plain, _ = _runs(path, 48, PROMPTS[:3], together=False, deterministic=True)
    spec, m = _runs(path, 48, PROMPTS[:3], together=False, deterministic=True, **SPEC)
    assert [c.tokens for c in spec] == [c.tokens for c in plain]
    assert m["draft_accepted_total"] > 0  # it really drafted and accepted
    assert m["draft_tokens_total"] == sum(c.timings.draft_n for c in spec)
    assert m["draft_accepted_total"] == sum(c.timings.draft_n_accepted for c in spec)


def test_eight_concurrent_speculating_requests_equal_their_solo_runs(small_q4_path: Path) -> None:
    plain, _ = _runs(small_q4_path, 32, PROMPTS, together=False, deterministic=True)
    spec, m = _runs(small_q4_path, 32, PROMPTS, together=True, deterministic=True, **SPEC)
    assert [c.tokens for c in spec] == [c.tokens for c in plain]
    assert m["draft_accepted_total"] > 0 and m["batched_decodes_total"] > 0


def test_with_llama_cpps_defaults_greedy_parts_only_at_near_ties(small_q4_path: Path) -> None:
    plain, _ = _runs(small_q4_path, 32, PROMPTS[:4], together=False)
    spec, m = _runs(small_q4_path, 32, PROMPTS[:4], together=True, **SPEC)
    assert m["draft_accepted_total"] > 0
    for got, solo in zip(spec, plain):
        assert same_greedy(got, solo, gap=0.1)


def test_logprobs_are_reported_for_every_accepted_token(small_q4_path: Path) -> None:
    plain, _ = _runs(small_q4_path, 64, PROMPTS[:4], together=False, deterministic=True)
    spec, m = _runs(small_q4_path, 64, PROMPTS[:4], together=False, deterministic=True, **SPEC)
    assert m["draft_accepted_total"] > 0
    for a, b in zip(spec, plain):
        got, want = a.logprobs, b.logprobs
        assert got is not None and want is not None and len(got) == len(want) == 64
        assert [[t for t, _ in lp.top] for lp in got] == [[t for t, _ in lp.top] for lp in want]
        np.testing.assert_allclose([v for lp in got for _, v in lp.top], [v for lp in want for _, v in lp.top],
                                   atol=1e-5)


# -- everything else still holds -------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec_llm(small_q4_path: Path):
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=512, deterministic=True, **SPEC) as llm:
        yield llm


@pytest.fixture(scope="module")
def plain_llm(small_q4_path: Path):
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=512, deterministic=True) as llm:
        yield llm


def test_seeded_sampling_is_reproducible_and_equals_the_run_without(spec_llm: LLM, plain_llm: LLM) -> None:
    kw = dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=123, max_tokens=64)
    accepted = 0
    for prompt in PROMPTS[:4]:
        a = spec_llm.complete(prompt, **kw)
        b = spec_llm.complete(prompt, **kw)
        c = plain_llm.complete(prompt, **kw)
        assert a.tokens == b.tokens == c.tokens
        accepted += a.timings.draft_n_accepted
    assert accepted > 0


def test_sampled_token_frequencies_match_the_run_without(spec_llm: LLM, plain_llm: LLM) -> None:
    """40 seeds each: the unigram frequencies of the two sets of runs agree
    within a total variation distance of 0.05 (each seed draws the same numbers
    in both; only a near tie of a draw could move a token)."""
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24)
    spec = Counter(t for s in range(40) for t in spec_llm.complete(PROMPTS[2], seed=s, **kw).tokens)
    plain = Counter(t for s in range(40) for t in plain_llm.complete(PROMPTS[2], seed=s, **kw).tokens)
    n = sum(plain.values())
    tv = 0.5 * sum(abs(spec[t] - plain[t]) for t in set(spec) | set(plain)) / n
    assert tv <= 0.05


def test_stop_strings_and_max_tokens_end_where_they_would_without(spec_llm: LLM, plain_llm: LLM) -> None:
    full = plain_llm.complete(PROMPTS[3], temperature=0, max_tokens=40)
    stop = full.text[len(full.text) // 2:][:3]
    want = plain_llm.complete(PROMPTS[3], temperature=0, max_tokens=40, stop=[stop])
    got = spec_llm.complete(PROMPTS[3], temperature=0, max_tokens=40, stop=[stop])
    assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
    for n in (1, 2, 5, 13):
        c = spec_llm.complete(PROMPTS[3], temperature=0, max_tokens=n)
        assert c.tokens == full.tokens[:n]


def test_a_grammar_request_stays_valid(spec_llm: LLM, plain_llm: LLM) -> None:
    schema_run_matches(spec_llm, plain_llm)


def test_a_request_can_opt_out(spec_llm: LLM) -> None:
    c = spec_llm.complete(PROMPTS[0], temperature=0, max_tokens=32, speculative=False)
    assert c.timings.draft_n == 0 and len(c.tokens) > 0


def test_cancelling_a_speculating_stream_leaves_the_others(spec_llm: LLM) -> None:
    cancel_leaves_the_other(spec_llm, PROMPTS[4], PROMPTS[5], 64)


def test_prefix_reuse_with_speculation(spec_llm: LLM) -> None:
    first = spec_llm.complete(PROMPTS[6], temperature=0, max_tokens=24)
    again = spec_llm.complete(PROMPTS[6], temperature=0, max_tokens=24)
    assert again.tokens == first.tokens and again.usage.cached_tokens > 0


def test_unified_cache_under_pressure_loses_nobody(small_q4_path: Path) -> None:
    prompts = PROMPTS[:4]
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=160, kv_unified=True, **SPEC) as llm:
        ban = eog_ban(llm)
        reqs = [llm.submit(p, temperature=0, max_tokens=48, logit_bias=ban) for p in prompts]
        done = [r.result() for r in reqs]
        assert all(len(c.tokens) > 0 for c in done)
        assert llm.metrics()["requests_finished"] == 4


def test_an_image_prompt_with_speculation_equals_the_run_without(models_dir: Path) -> None:
    from .test_multimodal import image
    from .test_multimodal_chat import data_url, user

    model = make_test_model(models_dir / "tiny-f16.gguf", "tiny", dtype="f16")
    mmproj = make_test_projector(models_dir / "tiny-mmproj.gguf", "tiny")
    msgs = user("Describe ", {"type": "image_url", "image_url": {"url": data_url(image(32, 32, 5))}}, " twice.")
    out = []
    for extra in ({}, SPEC):
        with LLM(model, mmproj=mmproj, context_size=512, n_seq_max=2, threads=2, deterministic=True,
                 **extra) as llm:
            out.append(llm.chat(msgs, max_tokens=48, temperature=0))
    assert out[1].tokens == out[0].tokens


COPY_SOURCE = '''class DraftLength:
    """How many tokens one request may draft next (``n_max`` at most; drafts
    shorter than ``n_min`` are not verified)."""

    __slots__ = ("n_max", "n_min", "limit", "pause", "misses")

    def __init__(self, n_max: int, n_min: int = 0) -> None:
        self.n_max = n_max
        self.n_min = n_min
        self.limit = n_max
        self.pause = 0  # steps left without drafting
        self.misses = 0  # drafts in a row rejected at their first token

    def allowed(self) -> int:
        """The longest draft allowed at this step (0: do not draft now)."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        return max(self.limit, self.n_min)

    def update(self, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens had its first ``accepted`` taken."""
        if drafted <= 0:
            return
        if accepted >= drafted:
            self.limit = min(self.n_max, self.limit * 2)
            self.misses = 0
        elif accepted == 0:
            self.misses += 1
            self.limit = max(1, self.limit // 2)
            if self.misses >= 2:
                self.pause = min(1 << (self.misses - 1), MAX_PAUSE)
        else:
            self.limit = max(1, min(self.n_max, accepted + 1))
            self.misses = 0
'''


@pytest.mark.real
def test_copy_heavy_chat_on_the_real_model(real_model_path: Path) -> None:
    """Rewriting code: most drafts are taken, and the output equals the run
    without speculation up to the near-tie rule."""
    msgs = [{"role": "user", "content": "Rewrite this Python code exactly, adding a comment line before each method:\n\n```python\n"
                + COPY_SOURCE + "```"}]
    out = []
    for extra in ({}, {"speculative": "ngram-mod"}):
        with LLM(real_model_path, threads=2, n_seq_max=1, context_size=1024, **extra) as llm:
            out.append(llm.chat(msgs, max_tokens=96, temperature=0, logprobs=2))
    plain, spec = out
    assert same_greedy(spec, plain, gap=0.1)
    assert spec.timings.draft_n_accepted > spec.timings.draft_n // 2 > 0


# -- the server --------------------------------------------------------------------------------
@pytest.mark.server
def test_serve_speculates_and_reports_it(small_q4_path: Path, tmp_path: Path) -> None:
    """`serve --spec-type`: the same greedy text as without, llama-server's
    draft_n / draft_n_accepted in timings and its spec_decode_* metrics."""
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from .helpers import Server

    texts = []
    for extra in ((), ("--spec-type", "ngram-simple", "--spec-ngram-size-n", "1", "--draft-max", "8",
                       "--no-draft-adaptive")):
        srv = Server(small_q4_path, tmp_path / f"server{len(texts)}.log", "--ctx-size", "1024", "--parallel", "2",
                     "--metrics", *extra, api_key=None)
        try:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
            out = [client.completions.create(model="m", prompt=p, max_tokens=48, temperature=0).choices[0].text
                   for p in PROMPTS[:4]]
            texts.append(out)
            native = srv.post("/completion", {"prompt": PROMPTS[3], "n_predict": 48, "temperature": 0}).json()
            metrics = srv.metrics()
        finally:
            assert srv.stop() == 0, srv.output()
    plain, spec = texts
    assert spec == plain
    assert native["timings"]["draft_n"] >= native["timings"]["draft_n_accepted"] > 0
    assert metrics["llamacpp:spec_decode_num_draft_tokens_total"] > 0
    assert metrics["llamacpp:spec_decode_num_accepted_tokens_total"] == metrics["draft_accepted_total"]
