"""The high-level LLM API on generated models."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from cortex_llama import (ClosedError, Context, GenerationParams, GrammarError, LLM, Model, ModelConfig,
                          Sampler, SamplerChain, TemplateError)
from cortex_llama.gen.output import StopMatcher as _StopMatcher
from cortex_llama.llm import FINISH_EOG, FINISH_LENGTH, FINISH_STOP, top_logprobs

from .helpers import generate

GREEDY = GenerationParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def llm(tiny_path: Path):
    with LLM(tiny_path, context_size=1024, threads=2, n_seq_max=4) as m:
        yield m


# -- configuration -----------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("max_tokens", -1), ("temperature", -0.1), ("top_p", 0.0),
                                         ("top_p", 1.5), ("top_k", -1), ("min_p", 2.0),
                                         ("repeat_penalty", 0.0), ("seed", -5)])
def test_generation_params_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"GenerationParams.{field}"):
        GenerationParams(**{field: value})


def test_model_config_validation(tiny_path: Path) -> None:
    assert ModelConfig(tiny_path).context_size == 4096
    assert ModelConfig(tiny_path).batch_size == 512 and ModelConfig(tiny_path).gpu_layers == 0
    for field, value in [("context_size", 0), ("threads", 0), ("batch_size", -1), ("gpu_layers", -2),
                         ("slot_prompt_similarity", 1.5), ("slot_prompt_similarity", -0.1)]:
        with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
            ModelConfig(tiny_path, **{field: value})
    with pytest.raises(TypeError, match="unknown ModelConfig fields"):
        LLM(tiny_path, load=False, context=5)


def test_trait_surface(llm: LLM, tiny_path: Path) -> None:
    assert llm.name == "cortex-llama test model"
    assert {"completion", "chat", "embeddings", "tokenize"} <= llm.capabilities
    assert llm.is_loaded
    toks = llm.tokenize("hello")
    assert llm.detokenize(toks, remove_special=True).strip() == "hello"
    assert llm.count_tokens("hello") == len(toks)


def test_unload_load_and_use_after_unload(tiny_path: Path) -> None:
    m = LLM(tiny_path, context_size=256, threads=2)
    first = m.complete("abc", GREEDY)
    m.unload()
    m.unload()
    assert not m.is_loaded
    for call in (lambda: m.complete("abc"), lambda: m.embed("x"), lambda: m.tokenize("x"),
                 lambda: list(m.stream("abc"))):
        with pytest.raises(ClosedError, match="not loaded"):
            call()
    m.load()
    assert m.complete("abc", GREEDY).text == first.text
    m.unload()


# -- completion ----------------------------------------------------------------------
def test_greedy_complete_equals_object_layer(llm: LLM, tiny: Model) -> None:
    c = llm.complete("Once upon a time", GREEDY)
    with Context(tiny, n_ctx=1024, n_threads=2) as ctx:
        expected = generate(ctx, SamplerChain([Sampler.greedy()]), tiny.tokenize("Once upon a time"), 24)
    assert c.tokens == expected
    assert c.finish_reason == FINISH_LENGTH
    assert c.usage.completion_tokens == 24 and c.usage.prompt_tokens == len(tiny.tokenize("Once upon a time"))
    assert c.timings.generation_ms > 0 and c.tokens_per_second > 0
    detok = tiny.vocab.detokenizer()
    assert c.text == detok.feed_many(expected) + detok.flush()


def test_stream_chunks_join_to_complete(llm: LLM) -> None:
    c = llm.complete("Streaming test", GREEDY)
    chunks = list(llm.stream("Streaming test", GREEDY))
    assert "".join(chunks) == c.text
    assert all(chunks) and all("\ufffd" not in ch or "\ufffd" in c.text for ch in chunks)


def test_stream_never_splits_utf8(llm: LLM) -> None:
    # The grammar forces multi-byte characters, which this vocab spells with byte tokens.
    text = "🙂é日🙂"
    c = llm.complete("utf8", temperature=0, max_tokens=40, grammar=f'root ::= "{text}"')
    assert c.text == text and len(c.tokens) == len(text.encode())
    chunks = list(llm.stream("utf8", temperature=0, max_tokens=40, grammar=f'root ::= "{text}"'))
    assert "".join(chunks) == text
    assert chunks == ["🙂", "é", "日", "🙂"]  # one chunk per complete character


def test_stop_strings(llm: LLM) -> None:
    full = llm.complete("Stop test", GenerationParams(temperature=0, max_tokens=40)).text
    assert len(full) > 10
    stop = full[5:8]
    c = llm.complete("Stop test", GenerationParams(temperature=0, max_tokens=40, stop=[stop]))
    assert c.finish_reason == FINISH_STOP
    assert c.text == full[: full.index(stop)]
    assert "".join(llm.stream("Stop test", GenerationParams(temperature=0, max_tokens=40, stop=[stop]))) == c.text


def test_stop_matcher_across_deltas() -> None:
    m = _StopMatcher(["STOP", "xyz"])
    out = []
    for piece in ["abc S", "T", "O", "P tail"]:
        text, stopped = m.feed(piece)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "abc " and stopped
    m2 = _StopMatcher(["END"])
    assert m2.feed("E") == ("", False)
    assert m2.feed("x") == ("Ex", False)


def test_eog_finish_reason(llm: LLM) -> None:
    eos = llm.model.vocab.eos
    c = llm.complete("the end", temperature=0, max_tokens=10, logit_bias={eos: 1000.0})
    assert c.finish_reason == FINISH_EOG and c.tokens == []


def test_prefix_reuse_skips_shared_prefix(llm: LLM) -> None:
    base = "A long shared prefix that the cache should keep around for the next call."
    llm.complete(base + " first", GREEDY)
    before = dict(llm.stats)
    c = llm.complete(base + " second question", GREEDY)
    evaluated = llm.stats["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    reused = llm.stats["prompt_tokens_reused"] - before["prompt_tokens_reused"]
    n_prefix = len(llm.tokenize(base))
    assert reused >= n_prefix and c.usage.cached_tokens == reused
    assert evaluated == c.usage.prompt_tokens - reused
    # and the answer is what a fresh LLM gives
    with LLM(llm.config.model_path, context_size=1024, threads=2) as fresh:
        assert fresh.complete(base + " second question", GREEDY).tokens == c.tokens


def test_breaking_out_of_a_stream_leaves_llm_usable(llm: LLM) -> None:
    expected = llm.complete("cancel me", GREEDY).text
    for i, _ in enumerate(llm.stream("cancel me", GenerationParams(temperature=0, max_tokens=200))):
        if i == 2:
            break
    assert llm.complete("cancel me", GREEDY).text == expected


def test_logprobs(llm: LLM) -> None:
    c = llm.complete("logprobs", temperature=0, max_tokens=5, logprobs=3)
    assert c.logprobs is not None and len(c.logprobs) == 5
    for lp, tok in zip(c.logprobs, c.tokens):
        assert lp.token == tok and lp.top[0][0] == tok  # greedy picks the best
        assert lp.logprob == pytest.approx(lp.top[0][1]) and lp.logprob <= 0
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    ids, lps = top_logprobs(logits, 2)
    assert list(ids) == [1, 2]
    assert np.exp(lps).sum() < 1 and lps[0] == pytest.approx(3 - np.log(np.exp(logits).sum()))


# -- chat ------------------------------------------------------------------------------
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]


def test_chat_uses_the_model_template(llm: LLM) -> None:
    prompt = llm.chat_prompt(MESSAGES)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                      "<|im_start|>assistant\n")
    c = llm.chat(MESSAGES, GREEDY)
    assert c.text == llm.complete(prompt, GREEDY).text
    assert "".join(d.content for d in llm.stream_chat(MESSAGES, GREEDY)) == c.content == c.text


def test_named_and_builtin_templates(tiny_path: Path) -> None:
    with LLM(tiny_path, context_size=256, threads=2, chat_template="llama3") as m:
        assert "<|start_header_id|>user<|end_header_id|>" in m.chat_prompt(MESSAGES)
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with LLM(tiny_path, context_size=256, threads=2, chat_template=custom) as m:
        assert m.chat_prompt(MESSAGES) == "[system] Be brief.\n[user] Hi!\n"
    with LLM(tiny_path, context_size=256, threads=2, chat_template="no-such-template {{") as m:
        with pytest.raises(TemplateError):
            m.chat_prompt(MESSAGES)
    with LLM(tiny_path, context_size=256, threads=2, chat_template="llama99") as m:
        with pytest.raises(TemplateError, match="unknown chat template name 'llama99'"):
            m.chat(MESSAGES)


def test_chatml_only_without_a_template(tmp_path: Path) -> None:
    from cortex_llama.testmodel import make_test_model

    path = make_test_model(tmp_path / "notemplate.gguf", chat_template=None)
    with LLM(path, context_size=256, threads=2) as m:
        assert m.model.chat_template() is None
        assert m.chat_prompt(MESSAGES).startswith("<|im_start|>system\nBe brief.<|im_end|>")


@pytest.mark.parametrize("bad", [[], [{"content": "x"}], [{"role": "user"}], ["hello"],
                                 [{"role": "user", "content": 5}], "just a string"])
def test_malformed_messages(llm: LLM, bad) -> None:
    with pytest.raises(ValueError, match="messages"):
        llm.chat(bad)


# -- structured output ----------------------------------------------------------------------
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "address": {"type": "object", "properties": {"zip": {"type": "string", "maxLength": 5},
                                                     "n": {"type": "integer"}},
                    "required": ["zip"]},
        "note": {"type": ["string", "null"], "maxLength": 3},
    },
    "required": ["name", "age", "color", "address"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates(llm: LLM, seed: int) -> None:
    c = llm.complete("JSON:", temperature=0.8, seed=seed, max_tokens=400, json_schema=SCHEMA)
    assert c.finish_reason == FINISH_EOG, c.text
    doc = json.loads(c.text)
    try:
        jsonschema.validate(doc, SCHEMA)
    except jsonschema.ValidationError as exc:
        # llama.cpp's grammar takes a lone invalid UTF-8 byte (the synthetic model's
        # byte tokens) as one character; decoded, it becomes U+FFFD: only a length
        # bound may then be off, never the structure
        assert exc.validator in ("maxLength", "minLength") and "\ufffd" in c.text, exc


def test_gbnf_grammar(llm: LLM) -> None:
    c = llm.complete("Answer:", temperature=0.7, seed=4, max_tokens=20, grammar='root ::= ("yes" | "no")')
    assert c.text in ("yes", "no") and c.finish_reason == FINISH_EOG


@pytest.mark.parametrize("schema", ["{not json", {"type": "frobnicate"}, {"type": "integer", "multipleOf": 2},
                                    {"not": {"type": "string"}}, {"$ref": "#/nowhere"}, []])
def test_invalid_json_schema(llm: LLM, schema) -> None:
    with pytest.raises(GrammarError):
        llm.complete("x", json_schema=schema, max_tokens=2)


def test_invalid_grammar(llm: LLM) -> None:
    with pytest.raises(GrammarError, match="pars"):
        llm.complete("x", grammar="root ::= (", max_tokens=2)


# -- batched -----------------------------------------------------------------------------
PROMPTS = ["Hello world", "The quick brown fox", "a", "Once upon a time, in a land", "zz top"]


def test_generate_equals_sequential(llm: LLM) -> None:
    batched = llm.generate(PROMPTS, GREEDY)  # 5 prompts, n_seq_max=4: two waves
    sequential = [llm.complete(p, GREEDY) for p in PROMPTS]
    assert [b.tokens for b in batched] == [s.tokens for s in sequential]
    assert [b.text for b in batched] == [s.text for s in sequential]


def test_generate_per_sequence_stop_and_finish(llm: LLM) -> None:
    full = llm.complete(PROMPTS[1], GenerationParams(temperature=0, max_tokens=30)).text
    stop = full[4:7]
    res = llm.generate(PROMPTS[:3], GenerationParams(temperature=0, max_tokens=30, stop=[stop]))
    assert res[1].finish_reason == FINISH_STOP and res[1].text == full[: full.index(stop)]
    for r, p in zip(res, PROMPTS[:3]):
        alone = llm.complete(p, GenerationParams(temperature=0, max_tokens=30, stop=[stop]))
        assert (r.text, r.finish_reason) == (alone.text, alone.finish_reason)


def test_generate_seeded_sampling_is_reproducible(llm: LLM) -> None:
    # Reproducible from the same engine state: batch composition (and so float
    # rounding, amplified by the f16 KV cache) depends on what else runs and on
    # what the prefix cache holds, which can flip a near-tie of a random draw.
    p = GenerationParams(temperature=1.0, max_tokens=12, seed=11)
    runs = []
    for _ in range(2):
        with LLM(llm.config.model_path, context_size=1024, threads=2, n_seq_max=4) as m:
            runs.append([c.tokens for c in m.generate(PROMPTS[:3], p)])
    assert runs[0] == runs[1]


# -- bad input ------------------------------------------------------------------------------
def test_prompt_too_long_and_truncation(tiny_path: Path) -> None:
    with LLM(tiny_path, context_size=256, threads=2) as m:
        long = "word " * 400
        with pytest.raises(ValueError, match="does not fit the context"):
            m.complete(long, max_tokens=4)
        c = m.complete(long, temperature=0, max_tokens=4, truncate=True)
        assert c.usage.prompt_tokens < 256 and len(c.tokens) == 4


def test_empty_prompt(llm: LLM) -> None:
    with pytest.raises(ValueError, match="empty"):
        llm.complete("")
    with pytest.raises(ValueError, match="empty"):
        llm.complete([])


def test_unknown_param(llm: LLM) -> None:
    with pytest.raises(TypeError, match="unknown GenerationParams"):
        llm.complete("x", temprature=0.5)


def test_warmup_leaves_no_trace(small_q4_path: Path) -> None:
    """ModelConfig.warmup (llama.cpp's default warm-up run at load): the KV cache
    and perf counters are cleared after it, and greedy output is the same without it."""
    texts = []
    for warm in (True, False):
        with LLM(small_q4_path, context_size=256, threads=2, n_seq_max=1, warmup=warm) as m:
            assert m.context.seq_pos_max(0) == -1 and m.context.perf()["n_eval"] <= 1
            texts.append(m.complete("Once upon a time", temperature=0, max_tokens=12).tokens)
    assert texts[0] == texts[1]


# -- embeddings ---------------------------------------------------------------------------
def test_embed(llm: LLM) -> None:
    one = llm.embed("hello world")
    assert one.shape == (llm.model.n_embd,) and np.linalg.norm(one) == pytest.approx(1.0, abs=1e-5)
    many = llm.embed(["hello world", "something else", "a third text", "4", "and a fifth one"])
    assert many.shape == (5, llm.model.n_embd)
    np.testing.assert_allclose(many[0], one, rtol=1e-4, atol=1e-5)
    alone = np.stack([llm.embed(t) for t in ["something else", "and a fifth one"]])
    np.testing.assert_allclose(many[[1, 4]], alone, rtol=1e-4, atol=1e-5)
    raw = llm.embed("hello world", normalize=False)
    assert np.linalg.norm(raw) != pytest.approx(1.0)
    last = llm.embed("hello world", pooling="last")
    assert not np.allclose(last, one)
    with pytest.raises(ValueError):
        llm.embed([])
    with pytest.raises(ValueError):
        llm.embed(["ok", ""])


def test_embed_tokens_are_what_mean_pooling_averages(small_q4_path: Path) -> None:
    """Pooling none (llama-server's --pooling none): one raw vector per token, whose
    mean is llama.cpp's mean pooling, on the quantized model."""
    with LLM(small_q4_path, context_size=512, threads=2, n_seq_max=2) as m:
        texts = ["hello hello hello", "a longer text of several words"]
        per_token = m.embed_tokens(texts)
        assert [v.shape for v in per_token] == [(len(m.tokenize(t)), m.model.n_embd) for t in texts]
        mean = m.embed(texts, pooling="mean", normalize=False)
        np.testing.assert_allclose(np.stack([v.mean(axis=0) for v in per_token]), mean, rtol=2e-3, atol=2e-3)
        with pytest.raises(ValueError, match="embed_tokens"):
            m.embed("x", pooling="none")
        with pytest.raises(ValueError, match=r"texts\[1\]"):
            m.embed_tokens(["ok", ""])


# -- asyncio ---------------------------------------------------------------------------------
def test_async_api(llm: LLM) -> None:
    async def main():
        c = await llm.acomplete("async", GREEDY)
        chunks = [d async for d in llm.astream("async", GREEDY)]
        ch = await llm.achat(MESSAGES, GREEDY)
        e = await llm.aembed(["a", "b"])
        g = await llm.agenerate(PROMPTS[:2], GREEDY)
        both = await asyncio.gather(llm.acomplete("x1", GREEDY), llm.acomplete("x2", GREEDY))
        return c, chunks, ch, e, g, both

    c, chunks, ch, e, g, both = asyncio.run(main())
    assert "".join(chunks) == c.text == llm.complete("async", GREEDY).text
    assert ch.text == llm.chat(MESSAGES, GREEDY).text
    assert e.shape == (2, llm.model.n_embd)
    assert [x.tokens for x in g] == [llm.complete(p, GREEDY).tokens for p in PROMPTS[:2]]
    assert [b.text for b in both] == [llm.complete(p, GREEDY).text for p in ("x1", "x2")]


def test_event_loop_stays_responsive_during_decode(small_path: Path) -> None:
    """Ticks of a 5 ms timer keep coming while a long completion runs."""
    with LLM(small_path, context_size=2048, batch_size=2048, threads=2) as m:
        async def main():
            ticks = []
            done = asyncio.Event()

            async def ticker():
                while not done.is_set():
                    ticks.append(time.perf_counter())
                    await asyncio.sleep(0.005)

            t = asyncio.create_task(ticker())
            start = time.perf_counter()
            await m.acomplete("x " * 900, temperature=0, max_tokens=64)
            elapsed = time.perf_counter() - start
            done.set()
            await t
            return ticks, elapsed

        ticks, elapsed = asyncio.run(main())
        gaps = np.diff(ticks)
        assert len(ticks) >= 5
        # no gap anywhere near the whole call: the loop was never blocked by a decode
        assert gaps.max() < max(0.5 * elapsed, 0.05), (gaps.max(), elapsed)


def test_async_stream_cancel(llm: LLM) -> None:
    async def main():
        got = []
        async for d in llm.astream("cancel", GenerationParams(temperature=0, max_tokens=500)):
            got.append(d)
            if len(got) == 3:
                break
        return got

    assert len(asyncio.run(main())) == 3
    assert llm.complete("abc", GREEDY).tokens  # still usable


def test_calls_from_threads_are_serialized(llm: LLM) -> None:
    expected = {p: llm.complete(p, GREEDY).text for p in PROMPTS[:3]}
    results: dict[str, str] = {}

    def work(p: str) -> None:
        results[p] = llm.complete(p, GREEDY).text

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_call_inside_an_open_stream_runs_alongside_it(tiny_path: Path) -> None:
    # with the engine, a call made while this thread holds an open stream is just
    # another request sharing the decodes (it used to be refused). Without flash
    # attention, so that sharing a decode cannot move a near-tie of this random
    # model (CPU flash attention's per-row path accumulates V in F16: 2e-4 logit
    # differences between a decode of one row and of two, see the README)
    with LLM(tiny_path, context_size=1024, threads=2, n_seq_max=4, flash_attn=False) as llm:
        _call_inside_stream(llm)


def _call_inside_stream(llm: LLM) -> None:
    expected_outer = llm.complete("outer", GenerationParams(temperature=0, max_tokens=50)).text
    expected_inner = llm.complete("inner", GREEDY).tokens
    stream = llm.stream("outer", GenerationParams(temperature=0, max_tokens=50))
    first = next(stream)
    assert llm.complete("inner", GREEDY).tokens == expected_inner
    assert first + "".join(stream) == expected_outer


def test_chat_template_writing_bos_is_not_doubled(tiny_path: Path) -> None:
    tmpl = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with LLM(tiny_path, context_size=256, threads=2, chat_template=tmpl) as m:
        toks = m.chat_tokens([{"role": "user", "content": "hi"}])
        assert toks[0] == m.model.vocab.bos and toks[1] != m.model.vocab.bos


def test_ctrl_c_during_a_long_prompt_leaves_llm_usable(small_path: Path) -> None:
    import signal

    with LLM(small_path, context_size=2048, batch_size=2048, threads=2) as m:
        prompt = "x " * 1500
        timer = threading.Timer(0.05, lambda: signal.pthread_kill(threading.main_thread().ident,
                                                                  signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            m.complete(prompt, temperature=0, max_tokens=4)
        timer.join()
        after = m.complete("after the interrupt", GREEDY)
    with LLM(small_path, context_size=2048, batch_size=2048, threads=2) as fresh:
        assert fresh.complete("after the interrupt", GREEDY).tokens == after.tokens


def test_penalties_see_the_prompt(llm: LLM) -> None:
    # Greedy on a random model loops; cut the loop just before it repeats a token of
    # its own prompt. Unpenalized, that token comes next; with a presence penalty
    # that sees the prompt (as in llama-server), no token of the prompt can.
    base = llm.model.tokenize("penalty check").tolist()
    gen = llm.complete(base, max_tokens=40, temperature=0).tokens
    k = next((i for i in range(1, len(gen)) if gen[i] in base + gen[:i]), None)
    assert k is not None, "greedy never repeated a token in 40 steps"
    prompt = base + gen[:k]
    assert llm.complete(prompt, max_tokens=1, temperature=0).tokens == [gen[k]]
    penalized = llm.complete(prompt, max_tokens=1, temperature=0, presence_penalty=1e3,
                             penalty_last_n=-1).tokens
    assert penalized[0] not in prompt
    # a window of 0 tokens disables the penalty: the plain greedy pick is back
    assert llm.complete(prompt, max_tokens=1, temperature=0, presence_penalty=1e3,
                        penalty_last_n=0).tokens == [gen[k]]
