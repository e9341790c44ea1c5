"""llama-server's native API on `cortex-llama serve`: /completion, /props, /slots,
/metrics (with --metrics), the exceed-context error and the serve flags -n / --temp /
--no-slots. A real server subprocess on the Q4_0 synthetic model, driven by httpx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def native(small_q4_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """2 slots of 512 cells, -n 16, --temp 0 (greedy), --metrics, a seed."""
    tmp = tmp_path_factory.mktemp("server-native")
    srv = Server(small_q4_path, tmp / "server.log", "--ctx-size", "1024", "--parallel", "2", "-n", "16",
                 "--temp", "0", "--metrics", "--seed", "42", api_key=None)
    yield srv
    assert srv.stop() == 0, srv.output()


def _events(srv: Server, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", srv.url + "/completion", json=body, timeout=60) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_completion_body_and_server_defaults(native: Server) -> None:
    r = native.post("/completion", {"prompt": "Once upon a time", "n_predict": 6, "return_tokens": True})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["stop"] is True and b["stop_type"] == "limit" and b["truncated"] is False
    assert b["tokens_predicted"] == 6 and len(b["tokens"]) == 6 and b["timings"]["predicted_n"] == 6
    assert b["timings"]["prompt_n"] + b["timings"]["cache_n"] == b["tokens_evaluated"]
    assert isinstance(b["content"], str) and isinstance(b["has_new_line"], bool)
    gs = b["generation_settings"]
    assert gs["n_predict"] == 6 and gs["temperature"] == 0 and gs["seed"] == 42 and gs["logit_bias"] == []
    # no n_predict (or -1): the server's -n 16; a request's own n_predict wins, more than -n too
    # (llama-server's: the slot's limit is the task's n_predict unless it is -1)
    for n, want in ((None, 16), (-1, 16), (40, 40)):
        body = {"prompt": "Once upon a time", **({"n_predict": n} if n else {}), "ignore_eos": True}
        assert native.post("/completion", body).json()["tokens_predicted"] == want


def test_completion_prompt_forms(native: Server) -> None:
    text = "The quick brown fox"
    toks = native.post("/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    one = native.post("/completion", {"prompt": text, "n_predict": 4}).json()["content"]
    assert native.post("/completion", {"prompt": toks, "n_predict": 4}).json()["content"] == one
    many = native.post("/completion", {"prompt": [toks, text, {"prompt_string": text}], "n_predict": 4}).json()
    assert isinstance(many, list) and [m["content"] for m in many] == [one] * 3
    assert [m["index"] for m in many] == [0, 1, 2]
    mixed = native.post("/completion", {"prompt": [1, 2, 3, text, 4], "n_predict": 2})
    assert mixed.status_code == 200 and isinstance(mixed.json()["content"], str)
    for bad, param in (({"prompt": [[]]}, "prompt[0]"), ({"prompt": {"prompt_string": text, "multimodal_data": "x"}},
                                                         "prompt"), ({"prompt": [10**9]}, "prompt")):
        r = native.post("/completion", bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_completion_stream_one_event_per_token(native: Server) -> None:
    body = {"prompt": "Once upon a time", "n_predict": 5, "n_probs": 3}
    plain = native.post("/completion", body).json()
    events = _events(native, {**body, "stream": True})
    tokens, final = events[:-1], events[-1]
    assert all(e["stop"] is False and len(e["tokens"]) == 1 for e in tokens) and len(tokens) == 5
    assert all(len(e["completion_probabilities"]) == 1 for e in tokens)
    assert "".join(e["content"] for e in tokens) == plain["content"]
    assert final["stop"] is True and final["content"] == "" and final["timings"]["predicted_n"] == 5
    probs = plain["completion_probabilities"]
    assert len(probs) == 5 and all(len(p["top_logprobs"]) == 3 and p["logprob"] <= 0 for p in probs)
    post = native.post("/completion", {**body, "post_sampling_probs": True}).json()["completion_probabilities"]
    assert all(0 < p["prob"] <= 1 and len(p["top_probs"]) == 3 for p in post)


def test_completion_logit_bias_ignore_eos_response_fields(native: Server) -> None:
    base = {"prompt": "Once upon a time", "n_predict": 4, "return_tokens": True}
    first = native.post("/completion", base).json()["tokens"][0]
    for bias in ([[first, False]], {str(first): -1e9}):  # greedy: the best token is banned
        b = native.post("/completion", {**base, "logit_bias": bias}).json()
        assert b["tokens_predicted"] == 4 and first not in b["tokens"], b
    gs = native.post("/completion", {**base, "ignore_eos": True}).json()["generation_settings"]
    assert gs["ignore_eos"] is True and gs["logit_bias"] and all(e["bias"] is None for e in gs["logit_bias"])
    picked = native.post("/completion", {**base, "response_fields": ["content", "generation_settings/n_predict"]})
    assert set(picked.json()) == {"content", "generation_settings/n_predict"}
    assert picked.json()["generation_settings/n_predict"] == 4
    r = native.post("/completion", {**base, "logit_bias": [["x", "high"]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_exceed_context_size_error(native: Server) -> None:
    for path, body in (("/completion", {"prompt": "word " * 700}),
                       ("/v1/completions", {"prompt": "word " * 700, "max_tokens": 1})):
        r = native.post(path, body)
        err = r.json()["error"]
        assert r.status_code == 400 and err["type"] == "exceed_context_size_error", r.text
        assert err["n_ctx"] == 512 and err["n_prompt_tokens"] > 512


def test_props_slots_and_metrics(native: Server) -> None:
    props = native.get("/props").json()
    assert props["total_slots"] == 2 and props["model_path"].endswith(".gguf") and props["is_sleeping"] is False
    assert props["default_generation_settings"]["n_ctx"] == 512
    assert props["default_generation_settings"]["params"]["seed"] == 42
    assert native.post("/props", {}).status_code == 501
    slots = native.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1] and all(s["is_processing"] is False and s["n_ctx"] == 512
                                                      for s in slots)
    r = native.post("/slots/0?action=save", {})
    assert r.status_code == 501 and "--slot-save-path" in r.json()["error"]["message"]
    assert native.post("/slots/0?action=erase").status_code == 501  # every action, as llama-server
    before = native.metrics()
    native.post("/completion", {"prompt": "Metrics count", "n_predict": 3})
    r = native.get("/metrics")
    assert r.status_code == 200 and b"Process-Start-Time-Unix" in dict(r.headers.raw)  # llama-server's case
    after = native.metrics()
    assert after["llamacpp:tokens_predicted_total"] == before["llamacpp:tokens_predicted_total"] + 3
    assert after["llamacpp:n_decode_total"] > before["llamacpp:n_decode_total"]
    assert "# TYPE llamacpp:prompt_tokens_total counter" in r.text


def test_no_slots_and_no_metrics_answer_501(small_q4_path: Path, tmp_path: Path) -> None:
    srv = Server(small_q4_path, tmp_path / "server.log", "--ctx-size", "512", "--parallel", "1", "--no-slots",
                 "--jinja", "--reasoning", "off", api_key=None)
    try:
        for path in ("/slots", "/metrics"):
            r = srv.get(path)
            assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error", r.text
        assert srv.get("/props").json()["endpoint_slots"] is False
    finally:
        assert srv.stop() == 0


def test_return_progress_events(small_q4_path: Path, tmp_path: Path) -> None:
    """llama-server's return_progress: streamed /completion and chat send a
    prompt_progress update at admission (processed == cache) and one per prefill
    chunk, up to the whole prompt, before the first token; nothing without it."""
    srv = Server(small_q4_path, tmp_path / "server.log", "--ctx-size", "512", "--parallel", "1",
                 "--batch-size", "16", "--temp", "0", api_key=None)
    try:
        prompt = " ".join(f"w{i}" for i in range(40))
        events = _events(srv, {"prompt": prompt, "n_predict": 2, "stream": True, "return_progress": True,
                               "timings_per_token": True})
        progress = [e for e in events if "prompt_progress" in e]
        first, last = progress[0]["prompt_progress"], progress[-1]["prompt_progress"]
        assert first["processed"] == first["cache"] and last["processed"] == last["total"] > 16
        assert len(progress) >= 3 and progress[0]["timings"]["prompt_n"] == 0
        assert [p["prompt_progress"]["processed"] for p in progress] == sorted(
            p["prompt_progress"]["processed"] for p in progress)
        assert events.index(progress[-1]) < next(i for i, e in enumerate(events) if e.get("tokens"))
        assert not [e for e in _events(srv, {"prompt": prompt, "n_predict": 2, "stream": True})
                    if "prompt_progress" in e]
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": prompt}], "max_tokens": 2, "stream": True,
                "return_progress": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        chat = [c["prompt_progress"] for c in chunks if "prompt_progress" in c]
        assert chat[-1]["processed"] == chat[-1]["total"] and len(chat) >= 3
        assert all(c["choices"][0]["delta"] == {"role": "assistant", "content": None}
                   for c in chunks if "prompt_progress" in c)
        # the Responses stream: response.in_progress again with each update, timings on deltas
        with httpx.stream("POST", srv.url + "/v1/responses", timeout=60, json={
                "input": prompt.replace("w", "r"), "max_output_tokens": 3, "stream": True, "return_progress": True,
                "timings_per_token": True}) as r:
            evs = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        updates = [e for e in evs if "prompt_progress" in e]
        assert len(updates) >= 3 and {e["type"] for e in updates} == {"response.in_progress"}
        assert updates[-1]["prompt_progress"]["processed"] == updates[-1]["prompt_progress"]["total"]
        deltas = [e for e in evs if e["type"] == "response.output_text.delta"]
        assert deltas and all({"prompt_per_second", "predicted_per_second"} <= e["timings"].keys() for e in deltas)
        assert evs[-1]["type"] == "response.completed" and evs[-1]["timings"]["predicted_n"] >= 1
        assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    finally:
        assert srv.stop() == 0
