"""llama-server's slot files on `cortex-llama serve --slot-save-path`: save a slot,
restore it into another, erase it, requests pinned with ``id_slot`` reusing what
was restored, and the 4xx answers for bad slots, actions and file names. A real
server subprocess on the Q4_0 synthetic model, driven by httpx."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .helpers import Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.server

PROMPT = "The quick brown fox jumps over the lazy dog near the river bank"


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slot-files") / "not-yet-there"


@pytest.fixture(scope="module")
def srv(small_q4_path: Path, saved_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server-slots") / "server.log"
    server = Server(small_q4_path, log, "--ctx-size", "1024", "--parallel", "2", "--temp", "0",
                    "--slot-save-path", str(saved_dir), "--cache-ram", "0", api_key=None)
    yield server
    assert server.stop() == 0, server.output()


def _complete(srv: Server, slot: int) -> dict:
    r = srv.post("/completion", {"prompt": PROMPT, "n_predict": 6, "id_slot": slot, "return_tokens": True})
    assert r.status_code == 200, r.text
    body: dict = r.json()
    return body


def test_save_restore_erase(srv: Server, saved_dir: Path) -> None:
    first = _complete(srv, 1)
    n_prompt = first["timings"]["prompt_n"]
    r = srv.post("/slots/1?action=save", {"filename": "one.bin"})
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["id_slot"] == 1 and saved["filename"] == "one.bin" and saved["n_saved"] == n_prompt + 5
    assert saved["n_written"] == (saved_dir / "one.bin").stat().st_size and saved["timings"]["save_ms"] >= 0

    r = srv.post("/slots/0?action=restore", {"filename": "one.bin"})
    assert r.status_code == 200, r.text
    assert r.json()["n_restored"] == saved["n_saved"] and r.json()["n_read"] == saved["n_written"]
    assert {s["id"]: s["n_cached"] for s in srv.get("/slots").json()}[0] == saved["n_saved"]
    again = _complete(srv, 0)
    assert again["tokens"] == first["tokens"]
    assert again["timings"]["prompt_n"] == 1  # only the last prompt token is evaluated

    r = srv.post("/slots/0?action=erase")  # no body, as llama-server's clients send it
    assert r.status_code == 200 and r.json() == {"id_slot": 0, "n_erased": n_prompt + 5}, r.text
    assert _complete(srv, 0)["timings"]["prompt_n"] == n_prompt


@pytest.mark.parametrize("path, body, param", [
    ("/slots/0?action=fly", {"filename": "x.bin"}, "action"),
    ("/slots/2?action=save", {"filename": "x.bin"}, "id_slot"),
    ("/slots/0?action=save", {}, "filename"),
    ("/slots/0?action=save", {"filename": "../escape.bin"}, "filename"),
    ("/slots/0?action=save", {"filename": "a/b.bin"}, "filename"),
    ("/slots/0?action=restore", {"filename": ".."}, "filename"),
    ("/slots/0?action=restore", {"filename": "missing.bin"}, "filename"),
])
def test_bad_slot_actions_are_400_naming_the_field(srv: Server, path: str, body: dict, param: str) -> None:
    r = srv.post(path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_file_that_does_not_restore_is_400_and_the_slot_empty(srv: Server, saved_dir: Path) -> None:
    (saved_dir / "junk.bin").write_bytes(b"definitely not a llama.cpp sequence state")
    r = srv.post("/slots/1?action=restore", {"filename": "junk.bin"})
    assert r.status_code == 400 and "unable to restore slot 1" in r.json()["error"]["message"], r.text
    assert {s["id"]: s["n_cached"] for s in srv.get("/slots").json()}[1] == 0
    r = srv.post("/completion", {"prompt": PROMPT, "n_predict": 1, "id_slot": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "id_slot", r.text
