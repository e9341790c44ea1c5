"""The binding of llama.cpp's chat layer: reasoning split, JSON schemas through its
converter (hypothesis-generated, sampled at temperature 1, validated), keywords it
cannot express, the shim's lifetime rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex_llama import LLM, ChatParser, ChatTemplates, ClosedError, GrammarError, Model
from cortex_llama.chat import schema_to_grammar

jsonschema = pytest.importorskip("jsonschema")

QWEN3 = Path(__file__).resolve().parent.parent / "vendor" / "llama.cpp" / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja"
ASK = [{"role": "user", "content": "Think, then answer."}]


def test_reasoning_is_split_from_content_streamed_and_not(small_q4_path: Path) -> None:
    """A think template (Qwen3's) on a quantized model, its output forced by grammar."""
    grammar = 'root ::= "<think>x</think>y"'
    with LLM(small_q4_path, context_size=512, n_seq_max=1, threads=2, embeddings=False,
             chat_template=QWEN3.read_text()) as llm:
        c = llm.chat(ASK, grammar=grammar, max_tokens=32, temperature=0)
        assert (c.reasoning_content, c.content) == ("x", "y")
        deltas = list(llm.stream_chat(ASK, grammar=grammar, max_tokens=32, temperature=0))
        assert "".join(d.reasoning_content for d in deltas) == "x"
        assert "".join(d.content for d in deltas) == "y"
        # reasoning_format none: thoughts stay in content
        raw = llm.chat(ASK, grammar=grammar, max_tokens=32, temperature=0, reasoning_format="none")
        assert raw.reasoning_content is None and "<think>x</think>" in (raw.content or "")


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}}, "email"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "pattern"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, r"\$defs"),
    ("{not json", "not valid JSON"),
])
def test_what_the_converter_cannot_express_raises_naming_it(schema: Any, keyword: str) -> None:
    with pytest.raises(GrammarError, match=keyword):
        schema_to_grammar(schema)


def test_chat_rejects_an_inexpressible_response_format_and_tool_schema(tiny_path: Path) -> None:
    with LLM(tiny_path, context_size=256, n_seq_max=1, threads=1, embeddings=False) as llm:
        with pytest.raises(GrammarError, match="response_format.*multipleOf"):
            llm.chat_prompt(ASK, response_format={"type": "json_schema", "json_schema": {
                "schema": {"type": "integer", "multipleOf": 2}}})
        tool = {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "not": {"const": 1}}}}}}
        with pytest.raises(GrammarError, match=r"tools\[0\].function.parameters/properties/n.*'not'"):
            llm.chat_prompt(ASK, tools=[tool])


_leaf = st.one_of(
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-50, 50), st.integers(0, 200)),
    st.builds(lambda n: {"type": "string", "pattern": f"^[a-z]{{1,{n}}}$"}, st.integers(1, 6)),
    st.builds(lambda vals: {"enum": vals}, st.lists(st.sampled_from(["red", "green", 3, True, None]),
                                                     min_size=1, max_size=3, unique=True)),
    st.just({"type": "boolean"}),
    st.just({"type": "string", "format": "date"}),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 8)),
)
_schema = st.builds(
    lambda props, req, items: {
        "type": "object",
        "properties": {**{f"p{i}": s for i, s in enumerate(props)},
                       "list": {"type": "array", "items": items, "minItems": 1, "maxItems": 3}},
        "required": [f"p{i}" for i in range(len(props)) if req] + ["list"],
        "additionalProperties": False},
    st.lists(_leaf, min_size=1, max_size=3), st.booleans(), _leaf)


@pytest.mark.real
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_schema)
def test_sampled_json_validates_against_generated_schemas(real_llm: LLM, schema: dict[str, Any]) -> None:
    outs = real_llm.generate(["Give me a JSON object:"] * 4, json_schema=schema, temperature=1.0,
                             max_tokens=160, seed=7)
    for out in outs:
        if out.finish_reason == "length":
            continue  # cut short: nothing to validate
        jsonschema.validate(json.loads(out.text), schema)


@pytest.fixture(scope="module")
def real_llm(real_model_path: Path):
    with LLM(real_model_path, context_size=2048, n_seq_max=4, threads=2, embeddings=False) as llm:
        yield llm


def test_templates_and_parsers_follow_their_owners(tiny_path: Path) -> None:
    model = Model(tiny_path)
    tmpl = ChatTemplates(model)
    assert "messages" in tmpl.source and tmpl.info["caps"]["supports_system_role"]
    prompt = tmpl.apply({"messages": ASK})
    parser = ChatParser(prompt.parser)
    parser.feed("hello", partial=False)
    assert parser.message["content"] == "hello"
    parser.close()
    parser.close()  # idempotent
    with pytest.raises(ClosedError):
        parser.feed("more")
    model.close()  # closes its templates first
    assert tmpl.closed
    with pytest.raises(ClosedError):
        tmpl.apply({"messages": ASK})
