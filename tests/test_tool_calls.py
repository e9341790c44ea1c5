"""Tool calls through llama.cpp's parsers: for every template of the corpus that can
write a tool call, the call the template itself renders (an assistant message with
``tool_calls``) parses back into the same call, whole and streamed in small pieces;
the polyfill for templates that cannot force a call; bad tool input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cortex_llama import LLM, ChatParser, ChatRequestError, ChatTemplates, Model, TemplateError
from cortex_llama.tool_polyfill import HermesParser, forced_call_grammar

jsonschema = pytest.importorskip("jsonschema")

TEMPLATES = sorted((Path(__file__).resolve().parent.parent / "vendor" / "llama.cpp" / "models" / "templates")
                   .glob("*.jinja"))
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
ARGS = {"city": "Paris", "days": 3}
ASK = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "a1b2c3d4e", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]}


def _rendered_call(tmpl: ChatTemplates) -> tuple[str, dict[str, Any]] | None:
    """(the text of a tool call as the template writes it, parser params), or None
    when the template writes none."""
    try:
        asked = tmpl.apply({"messages": ASK, "tools": [WEATHER], "add_generation_prompt": True})
        answered = tmpl.apply({"messages": [*ASK, CALL], "tools": [WEATHER], "add_generation_prompt": False,
                               "prefill_assistant": False})
    except (ChatRequestError, TemplateError):
        return None
    head = asked.generation_prompt or ""
    prefix = asked.prompt
    text = answered.prompt
    if not text.startswith(prefix[:len(prefix) - len(head)]) or "Paris" not in text[len(prefix) - len(head):]:
        return None
    return text[len(prefix):], asked.parser


def _parse_call(text: str, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """The template's output parsed whole: the longest prefix (the end-of-turn
    marker cut off) that gives one call."""
    for cut in range(0, 48):
        piece = text[:len(text) - cut]
        with ChatParser(params) as p:
            try:
                p.feed(piece, partial=False)
            except TemplateError:
                continue
            calls = p.message.get("tool_calls") or []
            if len(calls) == 1:
                return piece, calls
    return None


def test_every_format_parses_its_own_tool_calls_whole_and_streamed(tiny_path: Path) -> None:
    parsed, formats, skipped = [], set(), []
    with Model(tiny_path) as model:
        for path in TEMPLATES:
            tmpl = ChatTemplates(model, path.read_text())
            found = _rendered_call(tmpl)
            if found is None:
                skipped.append(path.name)
                continue
            text, params = found
            whole = _parse_call(text, params)
            if whole is None:
                skipped.append(path.name)
                continue
            piece, calls = whole
            assert calls[0]["function"]["name"] == "get_weather", path.name
            assert json.loads(calls[0]["function"]["arguments"]) == ARGS, path.name
            # streamed in 3-character pieces: the deltas add up to the same call
            with ChatParser(params) as p:
                deltas = []
                for i in range(0, len(piece), 3):
                    deltas += p.feed(piece[i:i + 3])
                deltas += p.feed("", partial=False)
            name = "".join(tc["function"].get("name", "") for d in deltas for tc in d.tool_calls
                           if "function" in tc)
            args = "".join(tc["function"].get("arguments", "") for d in deltas for tc in d.tool_calls
                           if "function" in tc)
            assert name == "get_weather", path.name
            assert json.loads(args) == ARGS, path.name
            parsed.append(path.name)
            formats.add(tmpl.apply({"messages": ASK, "tools": [WEATHER]}).format_name)
    print(f"{len(parsed)} templates parse their own calls; formats {sorted(formats)}; "
          f"no call rendered or recovered: {skipped}")
    assert len(parsed) >= 40, skipped


def test_hermes_polyfill_parses_whole_and_streamed() -> None:
    out = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    whole = HermesParser(["get_weather"])
    whole.feed(out, partial=False)
    assert whole.message["content"] == "Sure."
    assert json.loads(whole.message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    streamed = HermesParser(["get_weather"])
    deltas = [d for i in range(0, len(out), 4) for d in streamed.feed(out[i:i + 4])]
    deltas += streamed.feed("", partial=False)
    assert "".join(d.content for d in deltas) == "Sure."
    assert [tc["function"]["name"] for d in deltas for tc in d.tool_calls] == ["get_weather"]
    with pytest.raises(ChatRequestError, match="forced tool call"):
        HermesParser(["get_weather"], strict=True).feed("no call at all", partial=False)
    assert "root ::=" in forced_call_grammar([WEATHER["function"]])


@pytest.mark.real
def test_forced_call_on_a_quantized_model_gives_valid_arguments(real_model_path: Path) -> None:
    """SmolLM2-135M-Instruct Q4_1: its template has no tools, so llama.cpp cannot force
    a call (llama-server answers free text); the polyfill does."""
    with LLM(real_model_path, context_size=1024, n_seq_max=2, threads=2, embeddings=False) as llm:
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            c = llm.chat(ASK, tools=[WEATHER], tool_choice=choice, max_tokens=128, temperature=0)
            assert len(c.tool_calls) == 1 and c.tool_calls[0].name == "get_weather"
            jsonschema.validate(json.loads(c.tool_calls[0].arguments), WEATHER["function"]["parameters"])
        streamed = list(llm.stream_chat(ASK, tools=[WEATHER], tool_choice="required", max_tokens=128,
                                        temperature=0))
        assert [tc["function"]["name"] for d in streamed for tc in d.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("options, field", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name 'nope'"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice must be"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"reasoning_format": "loud"}, "reasoning_format must be"),
])
def test_bad_chat_options_name_the_field(tiny_path: Path, options: dict[str, Any], field: str) -> None:
    with LLM(tiny_path, context_size=256, n_seq_max=1, threads=1, embeddings=False) as llm:
        with pytest.raises(ChatRequestError, match=field.replace("[", r"\[").replace("]", r"\]")):
            llm.chat_prompt(ASK, **options)


def test_arguments_that_are_not_json_and_broken_templates(tiny_path: Path) -> None:
    bad_call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}
    with LLM(tiny_path, context_size=256, n_seq_max=1, threads=1, embeddings=False) as llm:
        with pytest.raises(ChatRequestError, match=r"messages\[1\].tool_calls\[0\].function.arguments"):
            llm.chat_prompt([*ASK, bad_call, {"role": "tool", "content": "x"}], tools=[WEATHER])
    with LLM(tiny_path, context_size=256, n_seq_max=1, threads=1, embeddings=False,
             chat_template="{% for m in messages %}{{ m.content }") as llm:
        with pytest.raises(TemplateError):
            llm.chat_prompt(ASK)
