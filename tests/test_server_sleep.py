"""llama-server's --sleep-idle-seconds on `cortex-llama serve`: the model unloads after
that many idle seconds and loads again for the next request that needs it; /health,
/props (is_sleeping), /models and /metrics answer while asleep without waking it, the
counters go on across the reload. A real server subprocess on the synthetic tiny model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from .helpers import Server, wait_for

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

pytestmark = pytest.mark.server

PROMPT = {"prompt": "Once upon a time", "n_predict": 6, "temperature": 0}


@pytest.fixture()
def sleepy(tiny_path: Path, tmp_path: Path) -> Iterator[Server]:
    server = Server(tiny_path, tmp_path / "server.log", "--sleep-idle-seconds", "1", "--metrics", api_key=None)
    yield server
    assert server.stop() == 0, server.output()


def _sleeping(srv: Server) -> bool:
    r = srv.get("/props")
    assert r.status_code == 200, r.text
    return bool(r.json()["is_sleeping"])


def _llamacpp(srv: Server, name: str) -> float:
    r = srv.get("/metrics")
    assert r.status_code == 200, r.text
    line = next(x for x in r.text.splitlines() if x.startswith(f"llamacpp:{name} "))
    return float(line.split()[1])


def test_sleeps_when_idle_and_wakes_for_a_generation(sleepy: Server) -> None:
    before = sleepy.post("/completion", PROMPT).json()
    props_awake = sleepy.get("/props").json()
    wait_for(lambda: _sleeping(sleepy), timeout=10, what="sleep")
    assert sleepy.get("/health").status_code == 200
    models = sleepy.get("/v1/models").json()["data"]
    assert len(models) == 1 and models[0]["id"] == props_awake["model_alias"]
    asleep = sleepy.get("/props").json()
    assert asleep["total_slots"] == props_awake["total_slots"] and asleep["chat_template"] == props_awake["chat_template"]
    predicted = _llamacpp(sleepy, "tokens_predicted_total")
    assert predicted == before["timings"]["predicted_n"]
    assert _sleeping(sleepy)  # none of those woke it
    after = sleepy.post("/completion", PROMPT).json()
    assert not _sleeping(sleepy)
    assert after["content"] == before["content"]  # the same model again
    assert _llamacpp(sleepy, "tokens_predicted_total") == predicted + after["timings"]["predicted_n"]


def test_tokenize_and_token_counting_wake_it(sleepy: Server) -> None:
    for path, body in (("/tokenize", {"content": "hello"}),
                       ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "hi"}]})):
        wait_for(lambda: _sleeping(sleepy), timeout=10, what="sleep")
        r = sleepy.post(path, body)
        assert r.status_code == 200, r.text
        assert not _sleeping(sleepy)


def test_throughput_gauges_average_over_the_scrape_window(sleepy: Server) -> None:
    sleepy.post("/completion", PROMPT)
    assert _llamacpp(sleepy, "predicted_tokens_seconds") > 0  # the window holds the generation
    assert _llamacpp(sleepy, "predicted_tokens_seconds") == 0  # nothing since the last scrape


def test_never_sleeps_without_the_flag(tiny_path: Path, tmp_path: Path) -> None:
    srv = Server(tiny_path, tmp_path / "server.log", "--metrics", api_key=None)
    try:
        srv.post("/completion", PROMPT)
        time.sleep(1.5)
        assert not _sleeping(srv)
        assert srv.post("/tokenize", {"content": "hi"}).status_code == 200
    finally:
        assert srv.stop() == 0, srv.output()
