"""The template corpus: every real chat template in vendor/llama.cpp/models/templates,
rendered by ``LLM.chat_prompt`` and by native ``llama-server --jinja
--chat-template-file F`` (``POST /apply-template``) built from the same tree, on the
same model, with four conversations. Marker ``native``: needs bench/.build-server
(``python3 scripts/build_llama_server.py``; CI builds it in .ci/run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cortex_llama import LLM, LlamaError

from .native_server import NativeServer, llama_server_binary

pytestmark = pytest.mark.native

TEMPLATES = sorted((Path(__file__).resolve().parent.parent / "vendor" / "llama.cpp" / "models" / "templates")
                   .glob("*.jinja"))

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}
CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello. What do you need?"},
        {"role": "user", "content": "The capital of France?"}]
CALL_HISTORY = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "a1b2c3d4e", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": '{"temp": 21}'}]
REASONING = [{"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
             {"role": "user", "content": "And 3+3?"}]
CONVERSATIONS: dict[str, dict[str, Any]] = {
    "chat": {"messages": CHAT},
    "tools": {"messages": CHAT, "tools": [WEATHER]},
    "tool-call history": {"messages": CALL_HISTORY, "tools": [WEATHER]},
    "reasoning": {"messages": REASONING},
    # typed parts (text joined by llama.cpp's chat layer) and an assistant prefill of parts
    "content parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name"},
                                                                 {"type": "text", "text": "a city."}]}]},
    "prefill parts": {"messages": [*CHAT, {"role": "assistant", "content": [{"type": "text", "text": "Wh"},
                                                                             {"type": "text", "text": "ill"}]}]},
}
MIN_EQUAL = 68  # of the 70 templates, on each conversation (issue #18)


def _strip_bos(text: str, bos: str) -> str:
    return text[len(bos):] if bos and text.startswith(bos) else text


def _ours(llm: LLM, body: dict[str, Any]) -> str:
    try:
        return llm.chat_prompt(body["messages"], tools=body.get("tools"))
    except (LlamaError, ValueError) as exc:
        return f"<error {type(exc).__name__}>"


def _native(server: NativeServer, body: dict[str, Any]) -> str:
    r = server.post("/apply-template", body)
    return str(r.json()["prompt"]) if r.status_code == 200 else "<error>"


def test_every_template_renders_as_llama_server_does(tiny_path: Path) -> None:
    llama_server_binary()
    assert len(TEMPLATES) >= 70
    from cortex_llama import Model
    with Model(tiny_path) as m:
        bos = m.vocab.text(m.vocab.bos) if m.vocab.bos is not None else ""
    equal = {name: 0 for name in CONVERSATIONS}
    differ: dict[str, list[str]] = {name: [] for name in CONVERSATIONS}
    both_refuse: dict[str, list[str]] = {name: [] for name in CONVERSATIONS}  # the template raises
    for path in TEMPLATES:
        with NativeServer(tiny_path, "--jinja", "--chat-template-file", str(path)) as server, \
                LLM(tiny_path, context_size=256, n_seq_max=1, threads=1, embeddings=False,
                    chat_template=path.read_text()) as llm:
            for name, body in CONVERSATIONS.items():
                native = _strip_bos(_native(server, body), bos)
                ours = _strip_bos(_ours(llm, body), bos)
                both_failed = native.startswith("<error") and ours.startswith("<error")
                if both_failed:
                    both_refuse[name].append(path.name)
                if native == ours or both_failed:
                    equal[name] += 1
                else:
                    differ[name].append(path.name)
    report = {name: f"{equal[name]}/{len(TEMPLATES)} equal (both refuse: {both_refuse[name]}); "
                    f"differ: {differ[name]}" for name in CONVERSATIONS}
    print(report)
    for name in CONVERSATIONS:
        assert equal[name] >= MIN_EQUAL, report
