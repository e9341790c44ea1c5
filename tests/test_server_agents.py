"""What agent clients expect of the server: any model name, a clean served id,
llama-server's flags and paths, and safe defaults (media, Host, CORS, API key,
content type). A real `cortex-llama serve` subprocess, no mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .helpers import HTTP_TIMEOUT, Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def plain(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on a GGUF file whose name needs a slug, with embeddings and an API key."""
    from cortex_llama.testmodel import make_test_model

    model = make_test_model(models_dir / "SmolTest 135M-Instruct-Q4_1.gguf", "tiny")
    srv = Server(model, tmp_path_factory.mktemp("agents") / "plain.log", "--embeddings", "-c", "512",
                 "--parallel", "2")
    yield srv
    assert srv.stop() == 0, srv.output()


def test_any_model_name_and_a_slug_id(plain: Server) -> None:
    client = plain.client()
    assert [m.id for m in client.models.list().data] == ["smoltest-135m-instruct-q4_1"]
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=2)
    assert chat.model == "smoltest-135m-instruct-q4_1" and chat.choices
    done = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello", max_tokens=2)
    assert done.model == "smoltest-135m-instruct-q4_1"
    emb = client.embeddings.create(model="text-embedding-3-small", input="Hello")
    assert emb.model == "smoltest-135m-instruct-q4_1" and emb.data[0].embedding
    assert client.models.retrieve("gpt-4o-mini").id == "smoltest-135m-instruct-q4_1"


def test_unprefixed_llama_server_paths(plain: Server) -> None:
    assert plain.get("/models").json()["data"][0]["id"] == "smoltest-135m-instruct-q4_1"
    r = plain.post("/chat/completions", {"model": "x", "messages": MSGS, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert plain.post("/completions", {"prompt": "Hi", "max_tokens": 2}).json()["object"] == "text_completion"
    assert plain.post("/embeddings", {"input": "Hi"}).json()["data"][0]["embedding"]
    spec = plain.get("/openapi.json").json()["paths"]
    assert "/v1/chat/completions" in spec and "/chat/completions" not in spec


def test_alias_flags(tiny_path: Path, tmp_path: Path) -> None:
    for flag in ("--alias", "-a", "--model-alias"):
        srv = Server(tiny_path, tmp_path / f"{flag}.log", flag, "my-model", "-c", "256", "--parallel", "1")
        try:
            assert [m.id for m in srv.client().models.list().data] == ["my-model"]
        finally:
            assert srv.stop() == 0, srv.output()


def test_model_slug() -> None:
    from cortex_llama.server.state import model_slug

    assert model_slug("/m/SmolLM2-135M-Instruct-Q4_1.gguf") == "smollm2-135m-instruct-q4_1"
    assert model_slug("a b/My Model (v2).GGUF") == "my-model-v2"
    assert model_slug("...gguf") == "model"
