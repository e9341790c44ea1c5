"""What agent clients expect of the server: any model name, a clean served id,
llama-server's flags and paths, and safe defaults (media, Host, CORS, API key,
content type). A real `cortex-llama serve` subprocess, no mocks."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

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
                 "--parallel", "2", "--cors-origins", "http://ok.example,http://two.example",
                 "--allowed-hosts", "llm.internal")
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
    native = plain.post("/completions", {"prompt": "Hi", "n_predict": 2}).json()  # llama-server's: native
    assert "content" in native and native["generation_settings"]["n_predict"] == 2 and "object" not in native
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


# ---------------------------------------------------------------------------
# hardened by default
# ---------------------------------------------------------------------------
def test_json_content_type_required(plain: Server) -> None:
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = plain.post("/v1/chat/completions", content=json.dumps({"messages": MSGS}).encode(),
                       headers={"content-type": ctype})
        assert r.status_code == 415 and ctype.split(";")[0] in r.json()["error"]["message"], r.text
    r = plain.post("/tokenize", content=b'{"content": "x"}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_host_header_checked(plain: Server) -> None:
    port = plain.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"llm.internal:{port}", "LLM.internal"):
        assert plain.get("/v1/models", headers={"Host": host}).status_code == 200, host
    for host in (f"evil.example:{port}", "localhost.evil.example", "127.0.0.2"):
        r = plain.get("/v1/models", headers={"Host": host})
        assert r.status_code == 403 and "--allowed-hosts" in r.json()["error"]["message"], (host, r.text)
    assert plain.get("/health", headers={"Host": "evil.example"}).status_code == 403


def test_cors_only_for_listed_origins(plain: Server) -> None:
    pre = {"Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(plain.url + "/v1/chat/completions", headers=pre, timeout=HTTP_TIMEOUT)  # no key
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    bad = httpx.options(plain.url + "/v1/chat/completions", headers={**pre, "Origin": "http://evil.example"},
                        timeout=HTTP_TIMEOUT)
    assert bad.status_code >= 400 and "access-control-allow-origin" not in bad.headers
    got = plain.get("/v1/models", headers={"Origin": "http://two.example"})
    assert got.headers["access-control-allow-origin"] == "http://two.example"
    assert "access-control-allow-origin" not in plain.get("/v1/models", headers={"Origin": "http://evil.example"}).headers


def test_api_key_headers_and_docs(plain: Server) -> None:
    def get(path: str, **headers: str) -> Any:
        return httpx.get(plain.url + path, headers=headers, timeout=HTTP_TIMEOUT)

    assert get("/v1/models", **{"X-Api-Key": plain.api_key or ""}).status_code == 200
    assert get("/v1/models", **{"X-Api-Key": "wrong"}).status_code == 401
    assert get("/v1/models").status_code == 401
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert get(path).status_code == 401, path
        assert get(path, Authorization=f"Bearer {plain.api_key}").status_code == 200, path
    assert get("/health").status_code == 200


def test_no_500_for_big_schemas_and_token_ids(plain: Server) -> None:
    props = {f"p{i}": {"type": "string"} for i in range(1000)}
    big = {"type": "json_schema", "json_schema": {"name": "big", "schema": {"type": "object", "properties": props}}}
    chat = plain.client().chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=4,
                                                  response_format=big)  # type: ignore[arg-type]
    assert chat.choices[0].finish_reason in ("length", "stop")
    done = plain.client().completions.create(model="gpt-4o-mini", prompt="JSON:", max_tokens=4,
                                             extra_body={"response_format": big})
    assert done.choices[0].text.startswith("{")
    deep = ('{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", '
            '"json_schema": {"name": "x", "schema": ' + '{"type": "object", "properties": {"a": ' * 1200
            + '{"type": "string"}' + "}}" * 1200 + "}}}")
    r = plain.post("/v1/chat/completions", content=deep.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "deeper" in r.json()["error"]["message"], r.text
    r = plain.post("/detokenize", {"tokens": [1, 2**40]})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert str(2**40) in msg and "[0, 512)" in msg and r.json()["error"]["param"] == "tokens"


# -- local media files: the policy, then a server with --mmproj and --media-path ------------------
@pytest.fixture()
def media_dir(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "cat.png").write_bytes(b"png bytes")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "dirlink").symlink_to(tmp_path)
    return root


OUTSIDE = ["../secret.png", "sub/../../secret.png", "%2E%2E/secret.png", "link.png", "dirlink/secret.png",
           "/etc/passwd", "../nothing-here.png"]


def test_media_policy(media_dir: Path) -> None:
    from urllib.parse import unquote

    from cortex_llama.content import MediaPolicy
    from cortex_llama.errors import MediaError

    with pytest.raises(MediaError, match="--media-path"):
        MediaPolicy().read("sub/cat.png", "messages[0].content[0]")
    policy = MediaPolicy(media_dir)
    assert policy.read("sub/cat.png", "w") == b"png bytes"
    assert policy.read(str(media_dir / "sub" / "cat.png"), "w") == b"png bytes"
    messages = set()
    for spec in OUTSIDE:
        with pytest.raises(MediaError, match="outside the media directory") as exc:
            policy.read(unquote(spec), "w")
        messages.add(str(exc.value).replace(repr(unquote(spec)), "SPEC"))
    assert len(messages) == 1  # an existing and a missing outside file answer alike
    with pytest.raises(MediaError, match="not found: sub/dog.png"):
        policy.read("sub/dog.png", "w")
    with pytest.raises(MediaError, match="not a regular file"):
        policy.read("sub", "w")
    with pytest.raises(MediaError, match="limit of 4 bytes"):
        MediaPolicy(media_dir, max_bytes=4).read("sub/cat.png", "w")


def test_server_media_path(models_dir: Path, tmp_path: Path, media_dir: Path) -> None:
    import numpy as np

    from cortex_llama.multimodal import available
    from cortex_llama.testmodel import make_test_model, make_test_projector

    from .test_multimodal import png_bytes

    if not available():
        pytest.skip("this build has no libmtmd")
    model = make_test_model(models_dir / "tiny-f16-srv.gguf", "tiny", dtype="f16")
    mmproj = make_test_projector(models_dir / "tiny-mmproj-srv.gguf", "tiny")
    png = png_bytes(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (media_dir / "sub" / "cat.png").write_bytes(png)
    (media_dir.parent / "secret.png").write_bytes(png)

    def chat(srv: Server, url: str) -> Any:
        return srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": 4, "temperature": 0})

    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    srv = Server(model, tmp_path / "media.log", "--mmproj", str(mmproj), "-c", "1024", "--parallel", "1",
                 "--media-path", str(media_dir))
    try:
        want = chat(srv, data_url)
        assert want.status_code == 200, want.text
        for url in ("file://sub/cat.png", "sub/cat.png", "file://sub/%63at.png"):
            got = chat(srv, url)
            assert got.status_code == 200, (url, got.text)
            assert got.json()["choices"][0]["message"] == want.json()["choices"][0]["message"]
        for spec in OUTSIDE:
            for url in ("file://" + spec, spec):
                r = chat(srv, url)
                assert r.status_code == 400 and "outside the media directory" in r.text, (url, r.text)
                assert str(media_dir.parent) not in r.text
        r = chat(srv, "file://sub/dog.png")
        assert r.status_code == 400 and "not found: sub/dog.png" in r.text and "None" not in r.text
        # without --cors-origins, a keyed server reflects any origin (llama-server's default)
        r = httpx.options(srv.url + "/v1/chat/completions", timeout=HTTP_TIMEOUT, headers={
            "Origin": "http://any.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://any.example"
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
        assert r.headers["access-control-allow-headers"] == "Authorization"
        assert b"Access-Control-Allow-Origin" in dict(r.headers.raw)  # llama-server's letter case
    finally:
        assert srv.stop() == 0, srv.output()
    srv = Server(model, tmp_path / "nomedia.log", "--mmproj", str(mmproj), "-c", "1024", "--parallel", "1",
                 api_key=None)
    try:
        assert chat(srv, data_url).status_code == 200
        # no key and no --cors-origins: no CORS headers, so a foreign page cannot read answers
        pre = {"Origin": "http://any.example", "Access-Control-Request-Method": "POST"}
        r = httpx.options(srv.url + "/v1/chat/completions", timeout=HTTP_TIMEOUT, headers=pre)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in srv.get("/v1/models", headers={"Origin": "http://a.example"}).headers
        for url in ("file://sub/cat.png", f"file://{media_dir}/sub/cat.png", str(media_dir / "sub" / "cat.png")):
            r = chat(srv, url)
            assert r.status_code == 400 and "--media-path" in r.text, (url, r.text)
    finally:
        assert srv.stop() == 0, srv.output()
