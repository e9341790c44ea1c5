"""llama-server's request forms and routes on `cortex-llama serve`: embeddings of token
arrays, content parts and llama-server's objects (and its native /embedding), the chat
continuation rules (assistant prefill, continue_final_message, add_generation_prompt),
/v1/chat/completions/input_tokens and /infill. Real server subprocesses on the Q4_0
synthetic model (and a synthetic model with FIM tokens), driven by the openai client
and httpx."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from .helpers import Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.server

MODEL = "text-embedding-3-small"  # any name is accepted: one model is served
TEXT = "hello world"


@pytest.fixture(scope="module")
def srv(small_q4_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The Q4_0 model with --embeddings, 2 slots of 512 cells, greedy by default."""
    tmp = tmp_path_factory.mktemp("server-llama-routes")
    server = Server(small_q4_path, tmp / "server.log", "--ctx-size", "1024", "--parallel", "2", "--embeddings",
                    "--temp", "0", api_key=None)
    yield server
    assert server.stop() == 0, server.output()


def _err(r: Any, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    return err


def _vec(data: Any) -> np.ndarray:
    return np.asarray(data, dtype=np.float64)


def _close(a: Any, b: np.ndarray) -> bool:
    """Equal embeddings, up to the float rounding a batch's make-up changes (a
    quantized model rounds activations, so more than an f32 one)."""
    return bool(np.allclose(_vec(a), b, atol=2e-3))


# -- embeddings -----------------------------------------------------------------------------------
def test_embeddings_of_token_arrays_equal_the_text(srv: Server) -> None:
    client = srv.client()
    toks = srv.post("/tokenize", {"content": TEXT, "add_special": True}).json()["tokens"]
    by_text = _vec(client.embeddings.create(input=TEXT, model=MODEL).data[0].embedding)
    one = client.embeddings.create(input=toks, model=MODEL)
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(toks)
    assert _close(one.data[0].embedding, by_text)
    many = client.embeddings.create(input=[toks, toks[:3]], model=MODEL)
    assert [d.index for d in many.data] == [0, 1] and many.usage.prompt_tokens == len(toks) + 3
    assert _close(many.data[0].embedding, by_text)
    assert not _close(many.data[1].embedding, by_text)
    small = client.embeddings.create(input=[[1, 2, 3]], model=MODEL)
    assert len(small.data) == 1 and small.usage.prompt_tokens == 3
    assert abs(float(np.linalg.norm(_vec(small.data[0].embedding))) - 1) < 1e-4


def test_embeddings_of_content_parts_and_llama_server_objects(srv: Server) -> None:
    by_text = _vec(srv.post("/v1/embeddings", {"input": TEXT}).json()["data"][0]["embedding"])
    parts = {"content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}
    bos = srv.post("/tokenize", {"content": "", "add_special": True}).json()["tokens"]
    body = {"input": [parts, TEXT, {"prompt_string": TEXT}, [*bos, TEXT]], "model": MODEL}
    r = srv.post("/v1/embeddings", body)
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    assert len(got) == 4 and all(_close(d["embedding"], by_text) for d in got)
    one = srv.post("/v1/embeddings", {"input": parts}).json()["data"]
    assert len(one) == 1 and _close(one[0]["embedding"], by_text)
    # llama-server's native shape: /embedding, and "content" instead of "input"
    for path, key in (("/embedding", "content"), ("/embedding", "input"), ("/v1/embeddings", "content"),
                      ("/embeddings", "content")):
        native = srv.post(path, {key: [TEXT, "other"]})
        assert native.status_code == 200, native.text
        doc = native.json()
        assert isinstance(doc, list) and [d["index"] for d in doc] == [0, 1], (path, key)
        assert len(doc[0]["embedding"]) == 1 and _close(doc[0]["embedding"][0], by_text)


def test_embeddings_bad_inputs_are_400_naming_the_field(srv: Server) -> None:
    n_vocab = srv.get("/v1/models").json()["data"][0]["meta"]["n_vocab"]
    with pytest.raises(openai.BadRequestError) as info:
        srv.client().embeddings.create(input=[[1, 2, n_vocab]], model=MODEL)
    assert str(n_vocab) in str(info.value) and "vocabulary" in str(info.value)
    err = _err(srv.post("/v1/embeddings", {"input": [[1, 2], [5, -1]]}))
    assert err["param"] == "input[1]" and "-1" in err["message"] and str(n_vocab) in err["message"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    cases = [({"input": {"content": [{"type": "text", "text": "a"}, image]}}, "input.content[1]", "image_url"),
             ({"input": [{"prompt_string": "x", "multimodal_data": ["aGk="]}]}, "input[0].multimodal_data", "media"),
             ({"input": []}, "input", "empty"), ({"input": [[]]}, "input[0]", "empty"),
             ({"input": ""}, "input", "empty"), ({"input": {"text": "x"}}, "input", "content"),
             ({"input": [TEXT, 3.5]}, "input[1]", "string"), ({"input": {"content": "x"}}, "input.content", "list"),
             ({}, "input", "required"), ({"input": TEXT * 300}, "input", "batch size")]
    for body, param, word in cases:
        err = _err(srv.post("/v1/embeddings", body))
        assert err["param"] == param and word in err["message"], (body, err)


# -- chat continuation: llama-server's prefill rules ------------------------------------------------
PREFILL = [{"role": "user", "content": "Say something."}, {"role": "assistant", "content": "The answer is"}]


def _template(srv: Server, body: dict[str, Any]) -> Any:
    return srv.post("/apply-template", body)


def test_a_final_assistant_message_is_continued(srv: Server) -> None:
    prompt = _template(srv, {"messages": PREFILL}).json()["prompt"]
    assert prompt.endswith("<|im_start|>assistant\nThe answer is"), prompt
    explicit = {"messages": PREFILL, "continue_final_message": True, "add_generation_prompt": False}
    assert _template(srv, explicit).json()["prompt"] == prompt
    assert _template(srv, {**explicit, "continue_final_message": "content"}).json()["prompt"] == prompt
    closed = _template(srv, {"messages": PREFILL[:1], "add_generation_prompt": False}).json()["prompt"]
    assert closed.endswith("<|im_end|>\n") and "assistant" not in closed
    # the reply continues the text: greedy, it equals /completion of the rendered prompt
    chat = srv.client().chat.completions.create(model="m", messages=PREFILL, max_tokens=5)  # type: ignore[arg-type]
    toks = srv.post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True}).json()["tokens"]
    assert chat.usage is not None and chat.usage.prompt_tokens == len(toks)
    raw = srv.post("/completion", {"prompt": toks, "n_predict": 5}).json()
    # llama.cpp's continuation parser answers the whole assistant message: prefill + new text
    assert chat.choices[0].message.content == "The answer is" + raw["content"]


def test_continuation_rules_are_400_naming_the_field(srv: Server) -> None:
    two = [*PREFILL, {"role": "assistant", "content": "and more"}]
    with pytest.raises(openai.BadRequestError) as info:
        srv.client().chat.completions.create(model="m", messages=two, max_tokens=2)  # type: ignore[arg-type]
    assert "two or more assistant messages" in str(info.value)
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    cases = [({"messages": two}, "messages", "assistant messages"),
             ({"messages": PREFILL, "continue_final_message": True}, "add_generation_prompt", "both"),
             ({"messages": PREFILL, "continue_final_message": "content", "add_generation_prompt": True},
              "add_generation_prompt", "both"),
             ({"messages": [PREFILL[0], call], "continue_final_message": True, "add_generation_prompt": False},
              "messages", "tool_calls"),
             ({"messages": PREFILL, "continue_final_message": "everything"}, "continue_final_message", ""),
             ({"messages": [{"role": "user", "content": "x", "reasoning_content": "y"}]},
              "messages[0].reasoning_content", "assistant")]
    for body, param, word in cases:
        for path in ("/v1/chat/completions", "/apply-template"):
            err = _err(srv.post(path, {**body, "max_tokens": 2}))
            assert err["param"] == param and word in err["message"], (path, body, err)


# -- /v1/chat/completions/input_tokens --------------------------------------------------------------
TOOL = {"type": "function", "function": {"name": "get_time", "description": "the time in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


def test_input_tokens_equal_the_chat_usage(srv: Server) -> None:
    client = srv.client()
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]},
        {"messages": [{"role": "user", "content": "What time is it in Paris?"}], "tools": [TOOL]},
        {"messages": PREFILL},
    ]
    for body in bodies:
        done = client.chat.completions.create(model="m", max_tokens=2, **body)
        assert done.usage is not None
        for path in ("/v1/chat/completions/input_tokens", "/chat/completions/input_tokens"):
            r = srv.post(path, {**body, "model": "m", "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.json() == {"object": "response.input_tokens", "input_tokens": done.usage.prompt_tokens}
    err = _err(srv.post("/v1/chat/completions/input_tokens", {"messages": []}))
    assert err["param"] == "messages"
    err = _err(srv.post("/v1/chat/completions/input_tokens", {"messages": [*PREFILL, PREFILL[1]]}))
    assert err["param"] == "messages" and "assistant" in err["message"]


# -- /infill ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fim(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The small model with Qwen-style FIM tokens, quantized to Q4_0: one slot of 2048."""
    from cortex_llama import quantize
    from cortex_llama.testmodel import make_test_model

    f32 = make_test_model(models_dir / "small-fim.gguf", "small", fim=True)
    model = quantize(f32, models_dir / "small-fim-q4_0.gguf", "Q4_0")
    server = Server(model, tmp_path_factory.mktemp("server-fim") / "server.log", "--ctx-size", "2048",
                    "--parallel", "1", "--temp", "0", api_key=None)
    yield server
    assert server.stop() == 0, server.output()


def _toks(srv: Server, text: str, special: bool = False) -> list[int]:
    out: list[int] = srv.post("/tokenize", {"content": text, "add_special": False,
                                            "parse_special": special}).json()["tokens"]
    return out


def test_infill_without_fim_tokens_is_501_naming_them(srv: Server) -> None:
    err = _err(srv.post("/infill", {"input_prefix": "def f(", "input_suffix": ")\n"}), 501)
    assert err["type"] == "not_supported_error"
    assert all(name in err["message"] for name in ("fim_pre", "fim_suf", "fim_mid")), err


def test_infill_builds_the_fim_prompt(fim: Server) -> None:
    pre, suf, mid, rep, sep = (_toks(fim, t, True)[0] for t in
                               ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|repo_name|>", "<|file_sep|>"))
    bos = fim.post("/tokenize", {"content": "", "add_special": True}).json()["tokens"]
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    body = {"input_prefix": prefix, "input_suffix": suffix, "prompt": "a", "n_predict": 4}
    core = [*bos, pre, *_toks(fim, prefix), suf, *_toks(fim, suffix), mid, *_toks(fim, "a", True)]
    # llama-server's repo-level header comes first whenever the slot has room for it,
    # other files or not: [FIM_REP]myproject\n ... [FIM_SEP]filename\n
    last_file = [sep, *_toks(fim, "filename\n")]
    want = [rep, *_toks(fim, "myproject\n"), *last_file, *core]
    r = fim.post("/infill", body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["tokens_evaluated"] == len(want) and got["stop"] is True
    plain = fim.post("/completion", {"prompt": want, "n_predict": 4}).json()
    assert got["content"] == plain["content"] and got["prompt"] == plain["prompt"]
    # other files before it, in the repo-level pattern; mixed ids and strings in the prefix
    extra = [{"filename": "utils.py", "text": "def sub(a, b):\n    return a - b\n"}]
    head = [rep, *_toks(fim, "myproject\n"), sep, *_toks(fim, "utils.py\n"), *_toks(fim, extra[0]["text"]),
            *last_file]
    r = fim.post("/infill", {**body, "input_extra": extra, "input_prefix": [_toks(fim, "x")[0], prefix]})
    assert r.status_code == 200, r.text
    mixed = [*head, *bos, pre, _toks(fim, "x")[0], *_toks(fim, prefix), *core[len(bos) + 1 + len(_toks(fim, prefix)):]]
    assert r.json()["tokens_evaluated"] == len(mixed)
    assert r.json()["content"] == fim.post("/completion", {"prompt": mixed, "n_predict": 4}).json()["content"]
    stream = fim.post("/infill", {**body, "stream": True})
    assert stream.status_code == 200 and stream.text.count("data: ") == got["tokens_predicted"] + 1


def test_infill_bad_fields_are_400_naming_them(fim: Server) -> None:
    ok = {"input_prefix": "a", "input_suffix": "b"}
    cases = [({"input_suffix": "b"}, "input_prefix"), ({"input_prefix": "a"}, "input_suffix"),
             ({**ok, "prompt": [1, 2]}, "prompt"), ({**ok, "input_extra": {"text": "x"}}, "input_extra"),
             ({**ok, "input_extra": [{"filename": "f"}]}, "input_extra[0].text"),
             ({**ok, "input_extra": [{"text": "x", "filename": 3}]}, "input_extra[0].filename"),
             ({**ok, "input_prefix": [10**6]}, "input_prefix"), ({**ok, "input_suffix": [1.5]}, "input_suffix")]
    for body, param in cases:
        err = _err(fim.post("/infill", body))
        assert err["param"] == param, (body, err)
    # a long prefix keeps its last 3/4 batch of tokens (llama-server's cut), the suffix a quarter batch
    long = fim.post("/infill", {"input_prefix": "word " * 3000, "input_suffix": "end " * 3000, "n_predict": 1})
    assert long.status_code == 200, long.text
    header = 1 + len(_toks(fim, "myproject\n")) + 1 + len(_toks(fim, "filename\n"))
    assert long.json()["tokens_evaluated"] == header + 1 + 1 + 384 + 1 + (128 - 2) + 1


# -- --alias / --tags -------------------------------------------------------------------------------
def test_aliases_and_tags_as_llama_server(tiny_path: Path, tmp_path: Path) -> None:
    """--alias takes several names, comma-separated: the id is the first in sorted order;
    --tags are listed beside them."""
    server = Server(tiny_path, tmp_path / "server.log", "--model-alias", "tinyllama-2, fim,code,",
                    "--tags", "chat,fim,small", api_key=None)
    try:
        card = server.get("/v1/models").json()["data"]
        assert len(card) == 1
        assert card[0]["id"] == "code" and card[0]["aliases"] == ["code", "fim", "tinyllama-2"]
        assert card[0]["tags"] == ["chat", "fim", "small"]
        assert server.get("/props").json()["model_alias"] == "code"
        r = server.post("/v1/completions", {"prompt": "Once", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "code", r.text
    finally:
        assert server.stop() == 0, server.output()


# -- llama-server's extras of chat answers: timings, timings_per_token, __verbose ----------------------
def _events(r: Any) -> list[dict[str, Any]]:
    import json

    return [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]


def test_chat_answers_carry_timings_and_verbose(srv: Server) -> None:
    chat = {"messages": [{"role": "system", "content": "Book"}, {"role": "user", "content": "hi"}], "max_tokens": 4}
    body = srv.post("/v1/chat/completions", chat).json()
    t = body["timings"]
    assert t["predicted_n"] == body["usage"]["completion_tokens"]
    assert t["prompt_n"] + t["cache_n"] == body["usage"]["prompt_tokens"]
    assert "__verbose" not in body
    verbose = srv.post("/v1/chat/completions", {**chat, "verbose": True}).json()["__verbose"]
    assert "Book" in verbose["prompt"] and verbose["generation_settings"]["n_predict"] == 4
    assert verbose["tokens_predicted"] == verbose["timings"]["predicted_n"]


def test_chat_stream_timings_on_the_last_event(srv: Server) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    for usage in (False, True):
        events = _events(srv.post("/v1/chat/completions", {**chat, "stream_options": {"include_usage": usage}}))
        first, last = events[0], events[-1]
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": None} and "timings" not in first
        assert [e for e in events if "timings" in e] == [last]
        assert bool(last["choices"]) is not usage and last["timings"]["predicted_n"] <= 5
    events = _events(srv.post("/v1/chat/completions", {**chat, "timings_per_token": True}))
    assert "timings" not in events[0] and all("timings" in e for e in events[1:])
    counts = [e["timings"]["predicted_n"] for e in events[1:]]
    assert counts == sorted(counts) and counts[-1] <= 5


def test_chat_json_schema_shorthand(srv: Server) -> None:
    chat = {"messages": [{"role": "user", "content": "Write an example"}], "max_tokens": 32}
    r = srv.post("/v1/chat/completions", {**chat, "json_schema": {"const": "42"}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip() == '"42"'
    both = srv.post("/v1/chat/completions", {**chat, "json_schema": {"const": "42"}, "grammar": 'root ::= "a"'})
    assert _err(both)["param"] == "json_schema"


def test_verbose_server_answers_carry_verbose(tiny_path: Path, tmp_path: Path) -> None:
    server = Server(tiny_path, tmp_path / "server.log", "--verbose", api_key=None)
    try:
        body = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": 2}).json()
        assert body["__verbose"]["tokens_predicted"] == body["usage"]["completion_tokens"]
    finally:
        assert server.stop() == 0, server.output()


def test_openai_embeddings_refuse_pooling_none(tiny_path: Path, tmp_path: Path) -> None:
    """--pooling none gives a vector per token: OpenAI's body has no shape for it (400 naming
    input, as llama-server's)."""
    server = Server(tiny_path, tmp_path / "server.log", "--embeddings", "--pooling", "none", api_key=None)
    try:
        assert _err(server.post("/v1/embeddings", {"input": "hello hello"}))["param"] == "input"
        # llama-server's native routes: the raw vector of every token (not normalized)
        n = len(server.post("/tokenize", {"content": "hello hello", "add_special": True}).json()["tokens"])
        for path, body in (("/embedding", {"content": "hello hello"}), ("/embeddings", {"input": "hello hello"})):
            r = server.post(path, body)
            assert r.status_code == 200, r.text
            vecs = r.json()[0]["embedding"]
            assert len(vecs) == n and all(abs(sum(x * x for x in v) - 1) > 1e-3 for v in vecs), path
    finally:
        assert server.stop() == 0, server.output()


def test_web_ui_feature_routes_answer_403(srv: Server) -> None:
    """llama-server's /cors-proxy (--ui-mcp-proxy) and /tools (--tools), which this server
    does not have: 403 feature_disabled, as llama-server's when they are off."""
    for path in ("/cors-proxy", "/tools"):
        for r in (srv.get(path), srv.post(path, {})):
            assert _err(r, 403)["type"] == "feature_disabled", (path, r.text)
