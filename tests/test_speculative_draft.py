"""Speculative decoding with a draft model (llama.cpp's draft-simple).

The target is a synthetic model, the draft its Q8_0 copy: the same vocabulary,
and greedy choices that agree often. As with n-gram drafts, greedy output
equals the run without speculation up to the near-tie rule (exactly, in
deterministic mode, on the Q4_0 target; the F32 target's multi-row sums move
its logprobs by ~1e-4, which can flip a tie that close), and a seeded sampled
run equals the run without. The draft model's cells follow each
slot's history (prefix reuse, preemption and rejected drafts included).
"""

from __future__ import annotations

import subprocess
from collections import Counter
import sys
from pathlib import Path

import numpy as np
import pytest

from cortex_llama import LLM, Context, Drafter, Model, SpeculationError, quantize
from cortex_llama.speculative import DraftRequest
from cortex_llama.testmodel import PRESETS, make_test_model, make_test_projector

from .helpers import cancel_leaves_the_other, eog_ban, same_greedy, schema_run_matches

PROMPTS = [f"Story {i}: " + "the sea and the sky " * (1 + i % 4) for i in range(8)]
#: every draft verified (draft_adaptive=False): correctness must not hang on the cost model
DRAFT = {"draft_max": 6, "draft_adaptive": False}


@pytest.fixture(scope="module")
def draft_path(models_dir: Path, small_path: Path) -> Path:
    """The small model's Q8_0 copy: the draft of the small model and of its Q4_0 copy."""
    return quantize(small_path, models_dir / "small-q8_0.gguf", "Q8_0")


def _runs(path: Path, prompts: list[str], *, together: bool, n_tokens: int = 32, **config: object):
    with LLM(path, threads=2, n_seq_max=8, context_size=384, deterministic=True, **config) as llm:
        kw = dict(temperature=0, max_tokens=n_tokens, logit_bias=eog_ban(llm), logprobs=2)
        if together:
            out = [r.result() for r in [llm.submit(p, **kw) for p in prompts]]
        else:
            out = [llm.complete(p, **kw) for p in prompts]
        return out, llm.metrics()


def _same(spec: list, plain: list) -> bool:
    """Greedy runs equal up to the near-tie rule (ties within 2e-3)."""
    return all(same_greedy(a, b) for a, b in zip(spec, plain, strict=True))


# -- the drafter (object layer) ----------------------------------------------------------------
def test_a_draft_model_drafts_for_each_sequence_from_its_history(small_path: Path, draft_path: Path) -> None:
    with Model(small_path) as target, Model(draft_path) as draft:
        tctx = Context(target, n_ctx=512, n_seq_max=2, n_threads=2)
        dctx = Context(draft, n_ctx=512, n_seq_max=2, n_threads=2)
        d = Drafter("draft-simple", 2, draft=dctx, target=tctx, draft_max=8)
        history = np.asarray(target.tokenize(PROMPTS[3]), dtype=np.int32)
        n = len(history) - 1
        first = d.draft(0, history, n, int(history[-1]), 8)
        assert len(first) == 8 and all(0 <= t < target.n_vocab for t in first)
        assert d.draft(0, history, n, int(history[-1]), 8) == first  # the same cells, the same draft
        assert d.draft(1, history, n, int(history[-1]), 3) == first[:3]  # the other sequence catches up
        d.sync(1, history, 4)  # back to a shorter history, then forward again
        assert d.draft(1, history, n, int(history[-1]), 8) == first
        media = history.copy()
        media[2] = -1
        assert d.draft(0, media, n, int(history[-1]), 8) == []  # the draft model cannot read media
        other = np.asarray(target.tokenize(PROMPTS[5]), dtype=np.int32)
        alone = d.draft(1, other, len(other) - 1, int(other[-1]), 5)
        together = d.draft_many([DraftRequest(0, history, n, int(history[-1]), 8),
                                 DraftRequest(1, other, len(other) - 1, int(other[-1]), 5)])
        assert together == [first, alone]  # one draft-model batch a step for both
        assert d.draft_many([DraftRequest(0, history, n, int(history[-1]), 0)]) == [[]]
        with pytest.raises(SpeculationError, match="each sequence is drafted once per call"):
            d.draft_many([DraftRequest(0, history, n, int(history[-1]), 2)] * 2)
        d.accept(0, 3)
        dctx.close()  # the drafter closes first: it points into the draft context
        assert d.closed


def test_a_draft_model_with_another_vocabulary_is_refused_naming_both_sizes(models_dir: Path,
                                                                           small_path: Path) -> None:
    other = make_test_model(models_dir / "other-vocab.gguf", "tiny", n_vocab=PRESETS["small"].n_vocab + 500)
    with pytest.raises(SpeculationError, match=r"vocabulary has 4096 tokens, the draft model's 4596") as err:
        LLM(small_path, threads=2, draft_model=other).load()
    assert str(small_path) in str(err.value) and str(other) in str(err.value)


@pytest.mark.parametrize("bad, match", [({"speculative": "draft"}, "set ModelConfig.draft_model"),
                                        ({"speculative": "ngram", "draft_model": "d.gguf"},
                                         "draft_model='d.gguf' is set but"),
                                        ({"draft_model": "d.gguf", "draft_p_min": 2.0}, "draft_p_min"),
                                        ({"draft_model": "d.gguf", "draft_gpu_layers": -5}, "draft_gpu_layers")])
def test_config_errors_name_the_field(tiny_path: Path, bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LLM(tiny_path, **bad)


def test_a_missing_draft_model_file_is_named(small_path: Path, tmp_path: Path) -> None:
    from cortex_llama import ModelLoadError

    with pytest.raises(ModelLoadError, match="nope.gguf"):
        LLM(small_path, threads=2, draft_model=tmp_path / "nope.gguf").load()


# -- greedy equality ----------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["small", "small_q4"])
def test_greedy_with_a_draft_model_equals_greedy_without(target: str, draft_path: Path, request) -> None:
    path = request.getfixturevalue(f"{target}_path")
    plain, _ = _runs(path, PROMPTS[:3], together=False)
    spec, m = _runs(path, PROMPTS[:3], together=False, draft_model=draft_path, **DRAFT)
    assert _same(spec, plain) and (target == "small" or [c.tokens for c in spec] == [c.tokens for c in plain])
    assert m["draft_accepted_total"] > 0


def test_eight_concurrent_requests_with_a_draft_model_equal_their_solo_runs(small_path: Path,
                                                                             draft_path: Path) -> None:
    plain, _ = _runs(small_path, PROMPTS, together=False)
    spec, m = _runs(small_path, PROMPTS, together=True, draft_model=draft_path, **DRAFT)
    assert _same(spec, plain)
    assert m["draft_accepted_total"] > 0 and m["batched_decodes_total"] > 0


def test_lookup_then_the_draft_model(small_q4_path: Path, draft_path: Path) -> None:
    plain, _ = _runs(small_q4_path, PROMPTS[:3], together=False)
    spec, m = _runs(small_q4_path, PROMPTS[:3], together=False, speculative="ngram,draft",
                    draft_model=draft_path, ngram_size_n=1, **DRAFT)
    assert [c.tokens for c in spec] == [c.tokens for c in plain] and m["draft_accepted_total"] > 0


def test_the_cost_model_drafts_with_a_draft_model_too(small_q4_path: Path, draft_path: Path) -> None:
    plain, _ = _runs(small_q4_path, PROMPTS[:2], together=False, n_tokens=48)
    spec, _ = _runs(small_q4_path, PROMPTS[:2], together=False, n_tokens=48, draft_model=draft_path)
    assert [c.tokens for c in spec] == [c.tokens for c in plain]


# -- everything else still holds -------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec_llm(small_q4_path: Path, draft_path: Path):
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=384, deterministic=True,
             draft_model=draft_path, **DRAFT) as llm:
        yield llm


@pytest.fixture(scope="module")
def plain_llm(small_q4_path: Path):
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=384, deterministic=True) as llm:
        yield llm


def test_seeded_sampling_is_reproducible(spec_llm: LLM) -> None:
    kw = dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, seed=7, max_tokens=48)
    accepted = 0
    for prompt in PROMPTS[:3]:
        a = spec_llm.complete(prompt, **kw)
        assert a.tokens == spec_llm.complete(prompt, **kw).tokens
        accepted += a.timings.draft_n_accepted
    assert accepted > 0


def test_sampled_token_frequencies_match_the_run_without(spec_llm: LLM, plain_llm: LLM) -> None:
    """40 seeds each: unigram frequencies within a total variation distance of
    0.05. A verified row after a span's first comes from a multi-row decode
    (on this Q4_0 model up to ~0.1 apart in logits from a one-row decode), so a
    draw near a boundary can move; the distribution is the model's."""
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24)
    spec = Counter(t for s in range(40) for t in spec_llm.complete(PROMPTS[2], seed=s, **kw).tokens)
    plain = Counter(t for s in range(40) for t in plain_llm.complete(PROMPTS[2], seed=s, **kw).tokens)
    tv = 0.5 * sum(abs(spec[t] - plain[t]) for t in set(spec) | set(plain)) / sum(plain.values())
    assert tv <= 0.05


def test_a_schema_request_stays_valid(spec_llm: LLM, plain_llm: LLM) -> None:
    schema_run_matches(spec_llm, plain_llm)


def test_prefix_reuse_and_stop_strings(spec_llm: LLM, plain_llm: LLM) -> None:
    first = spec_llm.complete(PROMPTS[6], temperature=0, max_tokens=24)
    again = spec_llm.complete(PROMPTS[6], temperature=0, max_tokens=24)
    assert again.tokens == first.tokens == plain_llm.complete(PROMPTS[6], temperature=0, max_tokens=24).tokens
    assert again.usage.cached_tokens > 0
    stop = first.text[len(first.text) // 2:][:3]
    want = plain_llm.complete(PROMPTS[6], temperature=0, max_tokens=24, stop=[stop])
    got = spec_llm.complete(PROMPTS[6], temperature=0, max_tokens=24, stop=[stop])
    assert (got.text, got.finish_reason) == (want.text, want.finish_reason)


def test_cancelling_leaves_the_others(spec_llm: LLM) -> None:
    cancel_leaves_the_other(spec_llm, PROMPTS[4], PROMPTS[5], 48)


def test_unified_cache_under_pressure_loses_nobody(small_q4_path: Path, draft_path: Path) -> None:
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=160, kv_unified=True,
             draft_model=draft_path, **DRAFT) as llm:
        ban = eog_ban(llm)
        done = [r.result() for r in [llm.submit(p, temperature=0, max_tokens=48, logit_bias=ban)
                                     for p in PROMPTS[:4]]]
        assert all(len(c.tokens) == 48 for c in done)
        assert llm.metrics()["requests_finished"] == 4


def test_an_image_prompt_runs_without_the_draft_model(models_dir: Path) -> None:
    """The draft model cannot read the projector's embeddings: that request is
    not drafted, and its output equals the run without."""
    from .test_multimodal import image
    from .test_multimodal_chat import data_url, user

    model = make_test_model(models_dir / "tiny-f16.gguf", "tiny", dtype="f16")
    mmproj = make_test_projector(models_dir / "tiny-mmproj.gguf", "tiny")
    draft = quantize(model, models_dir / "tiny-q8_0.gguf", "Q8_0")
    msgs = user("Describe ", {"type": "image_url", "image_url": {"url": data_url(image(32, 32, 5))}}, " twice.")
    out = []
    for extra in ({}, {"draft_model": draft, **DRAFT}):
        with LLM(model, mmproj=mmproj, context_size=512, n_seq_max=2, threads=2, deterministic=True,
                 **extra) as llm:
            out.append(llm.chat(msgs, max_tokens=32, temperature=0))
    assert out[1].tokens == out[0].tokens and out[1].timings.draft_n == 0


# -- the CLI and the server --------------------------------------------------------------------------
def test_cli_run_with_a_draft_model_prints_the_same_text(small_q4_path: Path, draft_path: Path) -> None:
    base = [sys.executable, "-m", "cortex_llama", "run", str(small_q4_path), PROMPTS[2], "-n", "24",
            "--temp", "0", "--threads", "2"]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=300)
    spec = subprocess.run(base + ["--model-draft", str(draft_path), "--draft-max", "4"], capture_output=True,
                          text=True, timeout=300)
    assert plain.returncode == spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout


def test_cli_names_a_missing_draft_model(small_q4_path: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cortex_llama", "run", str(small_q4_path), "hi", "--model-draft",
                        str(tmp_path / "d.gguf")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "d.gguf" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.server
def test_serve_with_a_draft_model(small_q4_path: Path, draft_path: Path, tmp_path: Path) -> None:
    """`serve --model-draft`: greedy text as without (the near-tie rule aside,
    equal here), llama-server's timings and metrics, /slots says speculative."""
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from .helpers import Server

    srv = Server(small_q4_path, tmp_path / "server.log", "--ctx-size", "1024", "--parallel", "2", "--metrics",
                 "--model-draft", str(draft_path), "--draft-max", "4", "--no-draft-adaptive", api_key=None)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        text = client.completions.create(model="m", prompt=PROMPTS[3], max_tokens=32, temperature=0).choices[0].text
        native = srv.post("/completion", {"prompt": PROMPTS[3], "n_predict": 32, "temperature": 0}).json()
        slots = srv.get("/slots").json()
        metrics = srv.metrics()
    finally:
        assert srv.stop() == 0, srv.output()
    assert native["content"] == text
    assert native["timings"]["draft_n"] > 0 and slots[0]["speculative"] is True
    assert metrics["llamacpp:spec_decode_num_accepted_tokens_total"] == metrics["draft_accepted_total"] > 0
