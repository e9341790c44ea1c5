"""llama-server's Google Cloud Platform (Vertex AI) compatibility on `cortex-llama serve`:
with AIP_MODE=PREDICTION the server listens on AIP_HTTP_PORT and POST /predict (or
AIP_PREDICT_ROUTE) sends each instance to the route its @requestFormat names. A real
server subprocess on the synthetic tiny model, driven over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import Server, free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

pytestmark = pytest.mark.server

CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def gcp(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """AIP_HTTP_PORT names the port the helper reaches; --port asks for another one."""
    tmp = tmp_path_factory.mktemp("server-gcp")
    port = free_port()
    env = {"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "healthz"}
    server = Server(tiny_path, tmp / "server.log", "--parallel", "2", "--port", str(free_port()), api_key=None,
                    env=env, port=port)
    yield server
    assert server.stop() == 0, server.output()


def _predict(srv: Server, instances: Any) -> Any:
    r = srv.post("/predict", {"instances": instances})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_port_and_health_route_from_the_environment(gcp: Server) -> None:
    assert gcp.get("/health").status_code == 200  # the helper reached it on AIP_HTTP_PORT
    assert "AIP_HTTP_PORT" in gcp.output()
    assert gcp.get("/healthz").status_code == 200


def test_instances_go_to_their_routes_in_order(gcp: Server) -> None:
    direct = gcp.post("/v1/chat/completions", CHAT).json()["choices"][0]["message"]["content"]
    completion = gcp.post("/v1/completions", {"prompt": "Once", "max_tokens": 4, "temperature": 0}).json()
    got = _predict(gcp, [{"@requestFormat": "chatCompletions", **CHAT},
                         {"@requestFormat": "/v1/completions", "prompt": "Once", "max_tokens": 4, "temperature": 0},
                         {"@requestFormat": "tokenize", "content": "hello"}])
    assert len(got) == 3
    assert got[0]["object"] == "chat.completion" and got[0]["choices"][0]["message"]["content"] == direct
    assert got[1]["choices"][0]["text"] == completion["choices"][0]["text"]
    assert got[2]["tokens"] == gcp.post("/tokenize", {"content": "hello"}).json()["tokens"]


def test_stream_is_turned_off(gcp: Server) -> None:
    got = _predict(gcp, [{"@requestFormat": "chatCompletions", **CHAT, "stream": True}])
    assert got[0]["object"] == "chat.completion"


def test_a_bad_instance_is_an_error_prediction(gcp: Server) -> None:
    got = _predict(gcp, [{"max_tokens": 2}, "text", {"@requestFormat": "noSuchRoute"},
                         {"@requestFormat": "chatCompletions", "messages": "not a list"}])
    assert "@requestFormat" in got[0]["error"]["message"]
    assert "JSON object" in got[1]["error"]["message"]
    assert "noSuchRoute" in got[2]["error"]["message"]
    assert got[3]["error"]["param"] == "messages"  # the route's own 400 body


def test_a_bad_body_is_400_naming_instances(gcp: Server) -> None:
    for body in ({}, {"instances": {"a": 1}}, {"instances": [{}] * 129}):
        r = gcp.post("/predict", body)
        assert r.status_code == 400 and "instances" in r.json()["error"]["message"], r.text


def test_no_predict_route_without_aip_mode(tiny_path: Path, tmp_path: Path) -> None:
    srv = Server(tiny_path, tmp_path / "server.log", api_key=None)
    try:
        assert srv.post("/predict", {"instances": []}).status_code == 404
    finally:
        assert srv.stop() == 0, srv.output()
