"""The cortex-llama command line, run as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cortex_llama import LLM, GenerationParams

BASE = ["-c", "512", "-t", "2"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cortex_llama", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_run_streams_the_greedy_completion(tiny_path: Path) -> None:
    out = cli("run", str(tiny_path), "Hello CLI", "-n", "12", "--temp", "0", *BASE)
    assert out.returncode == 0, out.stderr
    with LLM(tiny_path, context_size=512, threads=2) as llm:
        expected = llm.complete("Hello CLI", GenerationParams(temperature=0, max_tokens=12)).text
    assert out.stdout == expected + "\n"


def test_run_json(tiny_path: Path) -> None:
    out = cli("run", str(tiny_path), "Hello CLI", "-n", "5", "--temp", "0", "--json", *BASE)
    doc = json.loads(out.stdout)
    assert len(doc["tokens"]) == 5 and doc["finish_reason"] == "length"


def test_run_with_json_schema(tiny_path: Path, tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                  "required": ["ok"]}))
    out = cli("run", str(tiny_path), "JSON:", "-n", "30", "--seed", "1", "--json-schema", str(schema), *BASE)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout)["ok"], bool)


def test_chat_repl_keeps_history_and_exits(tiny_path: Path) -> None:
    out = cli("chat", str(tiny_path), "-n", "6", "--temp", "0", *BASE, stdin="hi\nand again\n/exit\nignored\n")
    assert out.returncode == 0, out.stderr
    replies = out.stdout.splitlines()
    assert len(replies) >= 2
    with LLM(tiny_path, context_size=512, threads=2) as llm:
        p = GenerationParams(temperature=0, max_tokens=6)
        first = llm.chat([{"role": "user", "content": "hi"}], p).text
    assert out.stdout.startswith(first + "\n")


def test_embed_prints_json(tiny_path: Path) -> None:
    out = cli("embed", str(tiny_path), "first", "second text", *BASE)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["dim"] == 64 and [d["text"] for d in doc["data"]] == ["first", "second text"]
    assert abs(sum(x * x for x in doc["data"][0]["embedding"]) - 1) < 1e-3


def test_tokenize(tiny_path: Path) -> None:
    out = cli("tokenize", str(tiny_path), "héllo", "--json")
    toks = json.loads(out.stdout)
    assert toks[0]["id"] == 1
    assert b"".join(bytes.fromhex(t["bytes"]) for t in toks[1:]).decode().strip() == "héllo"


def test_demo_shows_every_feature() -> None:
    out = cli("demo", "--random")  # the real model's demo: tests/test_real_model.py
    assert out.returncode == 0, out.stderr
    assert "random-weight test model" in out.stdout
    for section in ("streaming completion", "chat", "batched generation", "structured output", "embeddings"):
        assert section in out.stdout


def test_errors_exit_nonzero_with_a_message(tmp_path: Path) -> None:
    out = cli("run", str(tmp_path / "missing.gguf"), "x")
    assert out.returncode == 1 and "model file not found" in out.stderr and "Traceback" not in out.stderr


def test_serve_ctx_size_is_llama_servers_total(tiny_path: Path) -> None:
    """serve's -c is the KV cells in all, split over the slots (llama-server's -c)."""
    import pytest

    from cortex_llama.cli import SERVE_SLOT_CONTEXT, _slot_context, build_parser

    def per_slot(*argv: str) -> int:
        return _slot_context(build_parser().parse_args(["serve", str(tiny_path), *argv]))

    assert per_slot() == SERVE_SLOT_CONTEXT
    assert per_slot("-c", "8192", "-np", "4") == 2048
    assert per_slot("-c", "8192", "-np", "4", "-kvu") == 8192
    from cortex_llama import Model

    with Model(tiny_path) as m:
        assert per_slot("-c", "0", "-np", "1") == m.n_ctx_train > 0
    with pytest.raises(ValueError, match="-c 2 over 4 slots"):
        per_slot("-c", "2", "-np", "4")
