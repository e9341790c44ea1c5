"""Tool calls of the HTTP server: parsing both formats, streaming, and the grammar
that forces a call (checked on a real model: the output it forces parses and
validates against the function's schema)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
jsonschema = pytest.importorskip("jsonschema")

from cortex_llama import LLM  # noqa: E402
from cortex_llama.errors import GrammarError  # noqa: E402
from cortex_llama.server import tools  # noqa: E402

NAMES = ["get_weather", "get_time"]
WEATHER = {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                     "days": {"type": "integer"}}, "required": ["city"]}}
CLOCK = {"name": "get_time", "parameters": {"type": "object", "properties": {
    "zone": {"$ref": "#/$defs/zone"}}, "required": ["zone"], "$defs": {"zone": {"enum": ["UTC", "CET"]}}}}


def test_parse_hermes() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}</tool_call>'
    content, calls = tools.parse_tool_calls(text, NAMES, tools.HERMES)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "UTC"})]


def test_parse_hermes_ignores_unknown_and_broken_calls() -> None:
    unknown = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert tools.parse_tool_calls(unknown, NAMES) == (unknown, [])
    broken = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    assert tools.parse_tool_calls(broken, NAMES) == (broken, [])
    assert tools.parse_tool_calls("plain text", NAMES) == ("plain text", [])
    # an unclosed block at the end (cut by max_tokens) still counts when its JSON is whole
    _, calls = tools.parse_tool_calls('<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}', NAMES)
    assert [c.name for c in calls] == ["get_time"]


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '<|python_tag|>{"name": "get_weather", "arguments": {"city": "Oslo"}}',
    '  [{"name": "get_weather", "parameters": {"city": "Oslo"}}]',
])
def test_parse_llama3(text: str) -> None:
    content, calls = tools.parse_tool_calls(text, NAMES, tools.LLAMA3)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]


def test_parse_llama3_several_and_not_calls() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_time", "parameters": {"zone": "UTC"}}'
    assert [c.name for c in tools.parse_tool_calls(text, NAMES, tools.LLAMA3)[1]] == NAMES
    for text in ('{"answer": 42}', '{"name": "other", "parameters": {}}', "{not json"):
        assert tools.parse_tool_calls(text, NAMES, tools.LLAMA3) == (text, [])


def test_detect_format() -> None:
    assert tools.detect_format("...<tool_call>...") == tools.HERMES
    assert tools.detect_format("{{ '<|python_tag|>' }}") == tools.LLAMA3
    assert tools.detect_format("{% for m in messages %}") is None
    assert tools.detect_format(None) is None


def feed_all(sp: tools.ToolStreamSplitter, text: str, step: int = 3) -> str:
    return "".join(sp.feed(text[i:i + step]) for i in range(0, len(text), step))


def test_stream_splitter_hermes() -> None:
    sp = tools.ToolStreamSplitter(tools.HERMES)
    text = 'Sure, <toolbox> is not a call. <tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
    streamed = feed_all(sp, text)
    rest, calls = sp.finish(NAMES)
    assert streamed + rest == "Sure, <toolbox> is not a call. " and [c.name for c in calls] == ["get_time"]


def test_stream_splitter_plain_text_and_llama3() -> None:
    sp = tools.ToolStreamSplitter(None)
    streamed = feed_all(sp, "Just words, no <tool")
    rest, calls = sp.finish(NAMES)
    assert streamed + rest == "Just words, no <tool" and calls == []
    sp = tools.ToolStreamSplitter(tools.LLAMA3)
    assert feed_all(sp, '{"name": "get_weather", "parameters": {"city": "X"}}') == ""
    assert [c.name for c in sp.finish(NAMES)[1]] == ["get_weather"]
    sp = tools.ToolStreamSplitter(tools.LLAMA3)
    assert feed_all(sp, '{"no": "call"}') == ""
    assert sp.finish(NAMES) == ('{"no": "call"}', [])


def test_template_messages_and_inline_tools() -> None:
    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    out = tools.template_messages(msgs)
    assert out[0]["role"] == "system" and out[2]["content"] == ""
    assert out[2]["tool_calls"][0]["function"]["arguments"] == {"zone": "UTC"}
    inl = tools.inline_tools(out, [{"type": "function", "function": WEATHER}])
    assert inl[0]["role"] == "system" and "<tools>" in inl[0]["content"] and "get_weather" in inl[0]["content"]
    assert '<tool_call>{"name": "get_time"' in inl[2]["content"]
    assert inl[3] == {"role": "user", "content": "<tool_response>\n12:00\n</tool_response>"}
    bad = [{"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "f", "arguments": "{nope"}}]}]
    with pytest.raises(ValueError, match=r"messages\[0\]\.tool_calls\[0\]"):
        tools.template_messages(bad)


def test_grammar_errors() -> None:
    with pytest.raises(GrammarError):
        tools.tool_call_grammar([], tools.HERMES)
    with pytest.raises(GrammarError):
        tools.tool_call_grammar([{"name": "f", "parameters": {"type": "object", "properties": {
            "x": {"type": "string", "pattern": "a+"}}}}], tools.HERMES)


@pytest.mark.parametrize("fmt", [tools.HERMES, tools.LLAMA3])
def test_grammar_forces_a_valid_call(tiny_path: Path, fmt: str) -> None:
    grammar = tools.tool_call_grammar([WEATHER, CLOCK], fmt)
    schemas = {"get_weather": WEATHER["parameters"], "get_time": {**CLOCK["parameters"]}}
    with LLM(tiny_path, context_size=1024, threads=2) as llm:
        for seed in (1, 2, 3):
            out = llm.complete("Call a tool:", max_tokens=200, temperature=1.0, seed=seed, grammar=grammar)
            assert out.finish_reason == "end-of-generation", out.text
            content, calls = tools.parse_tool_calls(out.text, NAMES, fmt)
            assert content == "" and len(calls) == 1, out.text
            jsonschema.validate(json.loads(calls[0].arguments), schemas[calls[0].name])
        # a named function: only that one
        only = tools.tool_call_grammar([CLOCK], fmt)
        out = llm.complete("Call:", max_tokens=100, temperature=1.0, seed=5, grammar=only)
        assert [c.name for c in tools.parse_tool_calls(out.text, NAMES, fmt)[1]] == ["get_time"]


def test_json_object_grammar(tiny_path: Path) -> None:
    with LLM(tiny_path, context_size=1024, threads=2) as llm:
        out = llm.complete("JSON:", max_tokens=300, temperature=1.0, seed=4,
                           grammar=tools.JSON_GRAMMAR, logit_bias={})
        if out.finish_reason == "end-of-generation":
            assert isinstance(json.loads(out.text), dict)
        else:
            assert out.text.startswith("{")
