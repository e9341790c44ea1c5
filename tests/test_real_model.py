"""A real model, SmolLM2-135M-Instruct (Q4_1) from the model registry: its BPE
tokenizer and greedy decoding against a C program over the same libllama, its
chat template under Hugging Face's conventions, real answers, and JSON-schema
output at temperature 0.8."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cortex_llama
from cortex_llama import LLM, Context, Model, Sampler, SamplerChain

from .conftest import VENDOR, have_cc
from .helpers import generate

pytestmark = pytest.mark.real

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# One thread: the same tokens as more threads (each dot product is one thread's), and no
# spin-waiting threadpool to stall when CI's cores are shared
THREADS = 1
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# The C side of the native checks: "tok" prints the tokens of every text of a
# file (parse_special off, then on) and the bytes they detokenize to; "greedy"
# prints N greedy tokens of a prompt, as the greedy check of test_generation.py.
NATIVE_C = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void quiet(enum ggml_log_level l, const char * t, void * u) { (void)l; (void)t; (void)u; }
static llama_token * tokenize(const struct llama_vocab * v, const char * s, int len, int special, int * n) {
    *n = -llama_tokenize(v, s, len, NULL, 0, true, special);
    llama_token * toks = malloc(sizeof(llama_token) * (*n + 1));
    if (llama_tokenize(v, s, len, toks, *n, true, special) != *n) exit(4);
    return toks;
}
int main(int argc, char ** argv) {
    llama_log_set(quiet, NULL);
    if (ggml_backend_reg_count() == 0) ggml_backend_load_all_from_path(argv[3]);  /* GGML_BACKEND_DL */
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = strcmp(argv[1], "tok") == 0;
    struct llama_model * model = llama_model_load_from_file(argv[2], mp);
    if (!model) return 2;
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    if (mp.vocab_only) {  /* argv[4]: a file of records "<byte length>\n<bytes>" */
        FILE * f = fopen(argv[4], "rb");
        int len;
        while (fscanf(f, "%d", &len) == 1) {
            fgetc(f);
            char * s = malloc(len + 1);
            if ((int) fread(s, 1, len, f) != len) return 5;
            for (int special = 0; special <= 1; special++) {
                int n;
                llama_token * toks = tokenize(vocab, s, len, special, &n);
                for (int i = 0; i < n; i++) printf("%d ", toks[i]);
                printf("\n");
                char * out = malloc(len * 4 + 64);
                int m = llama_detokenize(vocab, toks, n, out, len * 4 + 64, false, special);
                if (m < 0) return 6;
                for (int i = 0; i < m; i++) printf("%02x", (unsigned char) out[i]);
                printf("\n");
                free(out); free(toks);
            }
            free(s);
        }
        fclose(f);
    } else {  /* greedy: argv[4] prompt (special tokens parsed), argv[5] n_predict, argv[6] threads,
                 argv[7] flash attention 0/1 */
        const char * prompt = argv[4];
        int n_predict = atoi(argv[5]), n_threads = atoi(argv[6]), n;
        llama_token * toks = tokenize(vocab, prompt, (int) strlen(prompt), 1, &n);
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = 1024; cp.n_batch = 512; cp.n_threads = n_threads; cp.n_threads_batch = n_threads;
        cp.flash_attn_type = atoi(argv[7]) ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        struct llama_context * ctx = llama_init_from_model(model, cp);
        struct llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
        struct llama_batch batch = llama_batch_get_one(toks, n);
        llama_token tok;
        for (int i = 0; i < n_predict; i++) {
            if (llama_decode(ctx, batch)) return 3;
            tok = llama_sampler_sample(smpl, ctx, -1);
            printf("%d\n", tok);
            batch = llama_batch_get_one(&tok, 1);
        }
        llama_sampler_free(smpl); llama_free(ctx); free(toks);
    }
    llama_model_free(model);
    return 0;
}
"""

CORPUS = [
    "",
    "Hello, world!",
    "The capital of France is",
    "def is_even(n: int) -> bool:\n    return n % 2 == 0\n\n\nprint([is_even(i) for i in range(10)])\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\n#include <stdio.h>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "日本語のテキストと中文的文本，还有한국어 텍스트。",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, keycap 1️⃣",
    "runs of whitespace:   three,\t\ttabs,\n\n\nnewlines,\r\n  \u00a0 nbsp, trailing    ",
    "                                                                ",
    "\n\n\n\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more <|im_end|><|im_start|> <file_sep><filename>a.py",
    "not special: <|im_start |> <| im_end|> <im_start>",
    "numbers 1234567890 3.14159 -42 1e-9 0x1F 1,000,000",
    "ÀÉÎÕÜ àéîõü ß ſ ﬁ Ωμέγα Привет мир עברית العربية हिन्दी",
    "URLs https://example.com/a?b=c&d=e#f and e-mail someone@example.org",
    "Mixed: naïve café résumé — “quotes” ‘single’ … ellipsis",
    "'s 't 're 've 'm 'll 'd  I'M YOU'RE",
]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C program, compiled once against the libllama the package uses."""
    if have_cc() is None:
        pytest.skip("no C compiler")
    libdir = cortex_llama._lib.lib_dir
    d = tmp_path_factory.mktemp("native")
    (d / "native.c").write_text(NATIVE_C)
    exe = d / "native"
    subprocess.run([have_cc(), "-std=c11", "-O1", "-I", str(VENDOR / "include"), "-I",
                    str(VENDOR / "ggml" / "include"), str(d / "native.c"), "-o", str(exe),
                    f"-L{libdir}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{libdir}"],
                   check=True)
    return exe


def run_native(exe: Path, *args: str) -> str:
    return subprocess.run([str(exe), args[0], args[1], str(cortex_llama._lib.lib_dir), *args[2:]],
                          capture_output=True, check=True, timeout=120).stdout.decode()


@pytest.fixture(scope="module")
def llm(real_model_path: Path):
    # flash attention off, as the C program of the greedy check runs it (llama.cpp's own
    # default, "auto", turns it on for the CPU; the two differ at near-ties)
    with LLM(real_model_path, context_size=4096, threads=THREADS, n_seq_max=10, flash_attn=False) as m:
        yield m


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------
def test_model_is_what_the_registry_says(llm: LLM) -> None:
    m = llm.model
    assert (m.n_vocab, m.n_layer, m.n_embd, m.n_head, m.n_head_kv) == (49152, 30, 576, 9, 3)
    assert m.meta("tokenizer.ggml.model") == "gpt2" and m.meta("tokenizer.ggml.pre") == "smollm"


def test_tokenizer_equals_native(llm: LLM, native: Path, real_model_path: Path, tmp_path: Path) -> None:
    corpus = CORPUS + [" ".join(CORPUS), "x" * 3000 + " " * 500 + "🙂" * 200]
    with (tmp_path / "corpus.bin").open("wb") as fh:
        for text in corpus:
            raw = text.encode()
            fh.write(b"%d\n" % len(raw) + raw)
    lines = run_native(native, "tok", str(real_model_path), str(tmp_path / "corpus.bin")).split("\n")
    model = llm.model
    for i, text in enumerate(corpus):
        for special in (False, True):
            row = lines[4 * i + 2 * special: 4 * i + 2 * special + 2]
            toks = model.tokenize(text, add_special=True, parse_special=special)
            assert toks.tolist() == [int(t) for t in row[0].split()], (text, special)
            assert model.vocab.detokenize_bytes(toks, unparse_special=special) == bytes.fromhex(row[1])
            # round trips: the text comes back, special-token text included
            assert model.detokenize(toks, unparse_special=special) == text
    # parse_special decides whether special-token text is one token or plain text
    on = model.tokenize(CORPUS[11], add_special=False, parse_special=True).tolist()
    off = model.tokenize(CORPUS[11], add_special=False, parse_special=False).tolist()
    (im_start,), (im_end,) = (model.tokenize(t, add_special=False, parse_special=True).tolist()
                              for t in (IM_START, IM_END))
    assert model.vocab.text(im_start) == IM_START and model.vocab.text(im_end) == IM_END
    assert on.count(im_start) == 2 and im_start not in off and im_end not in off
    assert model.detokenize(on, remove_special=False, unparse_special=False) == "user\nHi there\nassistant\n"


# ---------------------------------------------------------------------------
# chat template
# ---------------------------------------------------------------------------
def hf_render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
              bos: str, eos: str) -> str:
    """The template rendered as transformers' apply_chat_template does: a sandboxed
    Jinja environment with trim_blocks and lstrip_blocks, loop controls,
    raise_exception, and the special tokens as variables."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos)


CONVERSATIONS = {
    "default system": [{"role": "user", "content": "Hi!"}],
    "explicit system": [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": "Colour of the sky?"}],
    "multi-turn": [{"role": "user", "content": "What is 2+2?"},
                   {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "And 3+3?"}],
    "multi-turn with system": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "user", "content": "c\n\n  d"}],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_follows_hugging_face(llm: LLM, name: str, gen: bool) -> None:
    msgs = CONVERSATIONS[name]
    tmpl = llm.model.chat_template()
    assert tmpl is not None and "You are a helpful AI assistant named SmolLM" in tmpl
    expected = hf_render(tmpl, msgs, gen, "<|im_start|>", "<|im_end|>")
    assert llm.chat_prompt(msgs, add_generation_prompt=gen) == expected
    # ... which is ChatML with the default system message when none is given
    turns = ([] if msgs[0]["role"] == "system" else [("system", DEFAULT_SYSTEM)]) + \
        [(m["role"], m["content"]) for m in msgs]
    chatml = "".join(f"{IM_START}{r}\n{c}{IM_END}\n" for r, c in turns)
    assert expected == chatml + (f"{IM_START}assistant\n" if gen else "")


def test_assistant_turn_ends_at_im_end(llm: LLM) -> None:
    vocab = llm.model.vocab
    im_end = llm.model.tokenize(IM_END, add_special=False, parse_special=True).tolist()
    assert len(im_end) == 1 and vocab.is_eog(im_end[0]) and vocab.eos == im_end[0]
    toks = llm.chat_tokens([{"role": "user", "content": "Say hello."}])
    opener = llm.model.tokenize(f"{IM_START}assistant\n", add_special=False, parse_special=True).tolist()
    assert toks[-len(opener):] == opener
    c = llm.chat([{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=64)
    assert c.finish_reason == "end-of-generation", c
    assert c.text.strip() and IM_END not in c.text and IM_START not in c.text
    assert im_end[0] not in c.tokens


# ---------------------------------------------------------------------------
# greedy parity with the C program
# ---------------------------------------------------------------------------
PARITY_PROMPTS = {
    "completion": "The capital of France is",
    "chat": f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n{IM_START}user\nName three colours.{IM_END}\n"
            f"{IM_START}assistant\n",
}


@pytest.mark.parametrize("kind", PARITY_PROMPTS)
def test_greedy_equals_native(llm: LLM, native: Path, real_model_path: Path, kind: str) -> None:
    prompt, n = PARITY_PROMPTS[kind], 48
    model = llm.model
    toks = model.tokenize(prompt, parse_special=True)
    # the object layer, driven like the C program, with flash attention on and off
    expected_by_fa = {}
    for fa in (True, False):
        expected = [int(t) for t in run_native(native, "greedy", str(real_model_path), prompt, str(n),
                                               str(THREADS), str(int(fa))).split()]
        with Context(model, n_ctx=1024, n_batch=512, n_threads=THREADS, flash_attn=fa) as ctx:
            assert generate(ctx, SamplerChain([Sampler.greedy()]), toks, n) == expected, fa
        expected_by_fa[fa] = expected
    # LLM.complete with its defaults (a KV stream per slot, flash attention auto: on for
    # the CPU, as in llama.cpp's default context) stops at the first end-of-generation token
    expected = expected_by_fa[True]
    with LLM(real_model_path, context_size=1024, threads=THREADS) as fresh:
        c = fresh.complete(toks.tolist(), temperature=0, max_tokens=n)
    assert c.tokens == expected[:len(c.tokens)]
    if c.finish_reason == "end-of-generation":
        assert model.vocab.is_eog(expected[len(c.tokens)])
    else:
        assert len(c.tokens) == n


# ---------------------------------------------------------------------------
# real answers
# ---------------------------------------------------------------------------
def test_capital_of_france(llm: LLM) -> None:
    c = llm.complete("The capital of France is", temperature=0, max_tokens=8)
    assert "Paris" in c.text


def extract_code(text: str) -> str:
    m = re.search(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", text, re.S)
    return m.group(1) if m else text


def test_is_even_chat_writes_working_code(llm: LLM, tmp_path: Path) -> None:
    c = llm.chat([{"role": "user", "content": "Write a Python function is_even(n) that returns True "
                                              "when n is even."}], temperature=0, max_tokens=200)
    code = extract_code(c.text)
    ast.parse(code)
    check = code + "\n\nassert all(is_even(n) for n in (0, 2, -4, 10, 1000))\n" \
                   "assert not any(is_even(n) for n in (1, 3, -5, 11, 999))\nprint('ok')\n"
    (tmp_path / "check.py").write_text(check)
    out = subprocess.run([sys.executable, "-I", str(tmp_path / "check.py")], capture_output=True,
                         text=True, timeout=20, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (c.text, out.stderr)


# ---------------------------------------------------------------------------
# JSON schema at temperature 0.8
# ---------------------------------------------------------------------------
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16},
        "age": {"type": "integer"},
        "height_m": {"type": "number"},
        "role": {"enum": ["engineer", "doctor", "artist", "teacher"]},
        "active": {"type": "boolean"},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16},
                           "country": {"enum": ["FR", "JP", "US", "BR"]},
                           "zip": {"type": "string", "maxLength": 6}},
            "required": ["city", "country"],
        },
        "skills": {
            "type": "array", "minItems": 1, "maxItems": 2,
            "items": {"type": "object",
                      "properties": {"skill": {"type": "string", "maxLength": 12},
                                     "level": {"enum": ["low", "mid", "high"]},
                                     "years": {"type": "number"}},
                      "required": ["skill", "level"]},
        },
        "scores": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "skills"],
}


def test_json_schema_output_validates_at_temperature(llm: LLM) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    msgs = [{"role": "user", "content": "Describe a fictional person as JSON with a name, age, "
                                        "role, address and skills."}]
    # 20 requests decoded together; request i samples with seed 100 + i
    outs = llm.generate([llm.chat_tokens(msgs)] * 20, temperature=0.8, seed=100, max_tokens=400,
                        json_schema=SCHEMA)
    assert len({c.text for c in outs}) > 10  # the seeds differ
    for i, c in enumerate(outs):
        assert c.finish_reason != "length", (i, c.text)
        jsonschema.validate(json.loads(c.text), SCHEMA)


# ---------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------
def test_demo_answers_from_the_real_model(real_model_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cortex_llama", "demo", "-t", str(THREADS)], capture_output=True,
                         text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "model: smollm2-135m-instruct" in out.stdout and "random-weight" not in out.stdout
    for section in ("streaming completion", "chat", "batched generation", "structured output", "embeddings"):
        assert f"== {section}" in out.stdout
    assert "The capital of France is Paris" in out.stdout and "def is_even(n):" in out.stdout
    doc = out.stdout.split("== structured output")[1].split("== embeddings")[0].strip().splitlines()[-1]
    assert json.loads(doc)["capital"] == "Paris"
