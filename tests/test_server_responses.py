"""OpenAI's Responses API (``POST /v1/responses``) of ``cortex-llama serve``, driven
by the official ``openai`` client on the synthetic test models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import Server, template_server
from .test_server import HERMES_TEMPLATE, QWEN3

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.server

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"]}}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}


@pytest.fixture(scope="module", params=["small-hermes", "small_q4-default"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The f32 model with the Hermes template and the quantized one with its own."""
    srv = template_server(request, tmp_path_factory, "responses", HERMES_TEMPLATE)
    yield srv
    assert srv.stop() == 0, srv.output()


def test_plain_text_equals_chat_completions(server: Server) -> None:
    client = server.client()
    r = client.responses.create(model="test-model", instructions="You are terse.", input="Say hello.",
                                max_output_tokens=16, temperature=0)
    chat = client.chat.completions.create(
        model="test-model", max_tokens=16, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}])
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "test-model"
    assert r.output_text == chat.choices[0].message.content
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert [o.type for o in r.output] == ["message"] and r.output[0].role == "assistant"
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # input as message items with input_text parts renders the same
    items = [{"type": "message", "role": "system", "content": [{"type": "input_text", "text": "You are terse."}]},
             {"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}]
    r2 = client.responses.create(model="test-model", input=items, max_output_tokens=16, temperature=0)
    assert r2.output_text == r.output_text and r2.usage.input_tokens == r.usage.input_tokens


def test_input_tokens_route_counts_the_prompt(server: Server) -> None:
    """llama-server's POST /v1/responses/input_tokens (and /responses/input_tokens): the
    prompt tokens of a request, nothing generated; previous_response_id's conversation too."""
    body: dict[str, Any] = {"model": "test-model", "input": "Say hi", "instructions": "Be terse.", "max_output_tokens": 4}
    r = server.post("/v1/responses", body).json()
    for path in ("/v1/responses/input_tokens", "/responses/input_tokens"):
        got = server.post(path, body).json()
        assert got == {"object": "response.input_tokens", "input_tokens": r["usage"]["input_tokens"]}, path
    more = server.post("/v1/responses/input_tokens", {"input": "And again", "previous_response_id": r["id"]}).json()
    assert more["input_tokens"] > r["usage"]["input_tokens"]


def test_streamed_events_join_to_the_plain_text(server: Server) -> None:
    client = server.client()
    kw: dict[str, Any] = dict(model="test-model", input="Say hello.", max_output_tokens=12, temperature=0)
    plain = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == plain.usage.output_tokens
    # the client's stream helper assembles the same response
    with client.responses.stream(**kw) as stream:
        assert stream.get_final_response().output_text == text


def _check_call(call: Any) -> None:
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id and call.id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_forced_function_call(server: Server) -> None:
    """The polyfill forces the call at once; the Hermes template's grammar lets a
    random-weight model write text first (then the answer may end at the limit)."""
    client = server.client()
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        r = client.responses.create(model="test-model", input="Weather in Paris?", tools=[WEATHER],
                                    tool_choice=choice, max_output_tokens=120, temperature=0)
        calls = [o for o in r.output if o.type == "function_call"]
        if server.template == "default" or calls:
            assert len(calls) == 1 and r.status == "completed", r.output
            _check_call(calls[0])
        else:
            assert r.status == "incomplete", r.output
    events = list(client.responses.create(model="test-model", input="Weather in Paris?", tools=[WEATHER],
                                          tool_choice="required", max_output_tokens=120, temperature=0, stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    if server.template == "default":
        assert len(done) == 1
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert args == done[0].arguments
        (call,) = [o for o in events[-1].response.output if o.type == "function_call"]
        assert call.arguments == args
        _check_call(call)


def test_function_call_output_round_trip(server: Server) -> None:
    """A call and its result as input items render like the same chat messages."""
    client = server.client()
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather",
              "arguments": '{"city": "Paris", "unit": "celsius"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": '{"temperature": 21}'}]
    r = client.responses.create(model="test-model", input=items, tools=[WEATHER], max_output_tokens=8,
                                temperature=0)
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    chat = client.chat.completions.create(model="test-model", messages=msgs, tools=[CHAT_WEATHER],
                                          max_tokens=8, temperature=0)
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    if server.template == "hermes":
        prompt = server.post("/apply-template", {"messages": msgs, "tools": [CHAT_WEATHER]}).json()["prompt"]
        assert '"city": "Paris"' in prompt and '{"temperature": 21}' in prompt


def test_previous_response_id_chains_and_store(server: Server) -> None:
    client = server.client()
    first = client.responses.create(model="test-model", input="Say hello.", max_output_tokens=6, temperature=0)
    second = client.responses.create(model="test-model", previous_response_id=first.id, input="Again.",
                                     max_output_tokens=6, temperature=0)
    chat = client.chat.completions.create(model="test-model", max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Again."}])
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens == chat.usage.prompt_tokens and second.output_text == chat.choices[0].message.content
    third = client.responses.create(model="test-model", previous_response_id=second.id, input="More.",
                                    max_output_tokens=4, temperature=0)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    unstored = client.responses.create(model="test-model", input="Hi.", max_output_tokens=2, store=False)
    for rid in ("resp_unknown", unstored.id):
        with pytest.raises(openai.BadRequestError) as exc:
            client.responses.create(model="test-model", previous_response_id=rid, input="x", max_output_tokens=2)
        err = exc.value.body
        assert err["param"] == "previous_response_id" and rid in err["message"], err
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 10**6}, "max_output_tokens"),
    ({"input": "x", "temperature": "hot"}, "temperature"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
])
def test_bad_input_answers_400_naming_the_field(server: Server, body: dict[str, Any], param: str) -> None:
    r = server.post("/v1/responses", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_json_schema_text_format(server: Server) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    r = server.client().responses.create(
        model="test-model", input="A number.", max_output_tokens=40, temperature=0,
        text={"format": {"type": "json_schema", "name": "num", "schema": schema}})
    if r.status == "completed":
        jsonschema.validate(json.loads(r.output_text), schema)


def test_reasoning_items(small_q4_path: Path, tmp_path: Path) -> None:
    """Qwen3's thoughts come back as a reasoning item before the message, whole and streamed."""
    srv = Server(small_q4_path, tmp_path / "think.log", "--ctx-size", "1024", "--parallel", "1",
                 "--chat-template-file", str(QWEN3))
    try:
        client = srv.client()
        kw: dict[str, Any] = dict(model="m", input="Think.", max_output_tokens=16, temperature=0,
                                  extra_body={"grammar": 'root ::= "<think>x</think>y"'})
        r = client.responses.create(**kw)
        assert [o.type for o in r.output] == ["reasoning", "message"], r.output
        assert r.output[0].content[0].text == "x" and r.output_text == "y"
        events = list(client.responses.create(stream=True, **kw))
        assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "x"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "y"
        assert [o.type for o in events[-1].response.output] == ["reasoning", "message"]
        off = client.responses.create(model="m", input="Think.", max_output_tokens=2, reasoning={"effort": "none"})
        on = client.responses.create(model="m", input="Think.", max_output_tokens=2)
        assert off.usage.input_tokens > on.usage.input_tokens  # the empty think block of enable_thinking=false
    finally:
        assert srv.stop() == 0, srv.output()
