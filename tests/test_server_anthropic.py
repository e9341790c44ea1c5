"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) of
``cortex-llama serve``, driven by the official ``anthropic`` client on the
synthetic test models. (This client has no ``temperature``/``top_k`` arguments:
they go in ``extra_body``.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import KEY, Server, template_server
from .test_server import HERMES_TEMPLATE, QWEN3

pytest.importorskip("fastapi")
anthropic = pytest.importorskip("anthropic")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.server

GREEDY = {"temperature": 0}
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                             "unit": {"enum": ["celsius", "fahrenheit"]}},
                            "required": ["city", "unit"]}}
CHAT_WEATHER = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                 "parameters": WEATHER["input_schema"]}}
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module", params=["small-hermes", "small_q4-default"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The f32 model with the Hermes template and the quantized one with its own."""
    srv = template_server(request, tmp_path_factory, "anthropic", HERMES_TEMPLATE)
    yield srv
    assert srv.stop() == 0, srv.output()


def client(server: Server) -> Any:
    """The anthropic client; the key goes as ``Authorization: Bearer`` (auth_token)."""
    return anthropic.Anthropic(base_url=server.url, api_key=None, auth_token=server.api_key, max_retries=0,
                               timeout=60)


def test_plain_text_equals_chat_completions(server: Server) -> None:
    m = client(server).messages.create(model="test-model", max_tokens=16, system="You are terse.",
                                       messages=HELLO, extra_body=GREEDY)
    chat = server.client().chat.completions.create(
        model="test-model", max_tokens=16, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, *HELLO])
    assert m.type == "message" and m.role == "assistant" and m.model == "test-model" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == chat.choices[0].message.content
    assert m.stop_reason == ("max_tokens" if chat.choices[0].finish_reason == "length" else "end_turn")
    # llama-server's (and Anthropic's) usage: input_tokens exclude the cache reads
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == chat.usage.prompt_tokens
    assert m.usage.output_tokens == chat.usage.completion_tokens
    # system as text blocks renders the same
    m2 = client(server).messages.create(model="test-model", max_tokens=16, messages=HELLO, extra_body=GREEDY,
                                        system=[{"type": "text", "text": "You are "}, {"type": "text", "text": "terse."}])
    assert m2.content[0].text == m.content[0].text
    assert m2.usage.input_tokens + m2.usage.cache_read_input_tokens == chat.usage.prompt_tokens


def test_streamed_events_join_to_the_plain_text(server: Server) -> None:
    kw: dict[str, Any] = dict(model="test-model", max_tokens=12, messages=HELLO, extra_body=GREEDY)
    plain = client(server).messages.create(**kw)
    with client(server).messages.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_message()
    types = [e.type for e in events if e.type != "text"]  # "text": the helper's own events
    assert types[:2] == ["message_start", "content_block_start"] and types[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(types[2:-3]) == {"content_block_delta"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == plain.content[0].text == final.content[0].text
    assert final.stop_reason == plain.stop_reason and final.usage.output_tokens == plain.usage.output_tokens
    start = events[0].message.usage
    assert start.input_tokens + start.cache_read_input_tokens == \
        plain.usage.input_tokens + plain.usage.cache_read_input_tokens
    raw = server.post("/v1/messages", {"max_tokens": 12, "messages": HELLO, "stream": True, **GREEDY})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.startswith("event: message_start\ndata: ") and raw.text.rstrip().endswith('{"type": "message_stop"}')


def test_count_tokens_equals_the_prompt(server: Server) -> None:
    c = client(server)
    for kw in ({"system": "You are terse.", "messages": HELLO},
               {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]}):
        n = c.messages.count_tokens(model="test-model", **kw).input_tokens
        m = c.messages.create(model="test-model", max_tokens=1, extra_body=GREEDY, **kw)
        assert n == m.usage.input_tokens + m.usage.cache_read_input_tokens > 0


def test_forced_tool_use(server: Server) -> None:
    """The polyfill forces the call at once; the Hermes template's grammar lets a
    random-weight model write text first (then the answer may end at the limit)."""
    c = client(server)
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        m = c.messages.create(model="test-model", max_tokens=120, tools=[WEATHER], tool_choice=choice,
                              messages=[{"role": "user", "content": "Weather in Paris?"}], extra_body=GREEDY)
        uses = [b for b in m.content if b.type == "tool_use"]
        if server.template == "default" or uses:
            assert len(uses) == 1 and m.stop_reason == "tool_use", m
            assert uses[0].name == "get_weather" and uses[0].id
            jsonschema.validate(uses[0].input, WEATHER["input_schema"])
        else:
            assert m.stop_reason == "max_tokens", m
    with c.messages.stream(model="test-model", max_tokens=120, tools=[WEATHER], tool_choice={"type": "any"},
                           messages=[{"role": "user", "content": "Weather in Paris?"}], extra_body=GREEDY) as s:
        events = list(s)
        final = s.get_final_message()
    if server.template == "default":
        (use,) = [b for b in final.content if b.type == "tool_use"]
        args = "".join(e.delta.partial_json for e in events
                       if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
        assert json.loads(args) == use.input and final.stop_reason == "tool_use"
        jsonschema.validate(use.input, WEATHER["input_schema"])


def test_output_format_with_tools(server: Server) -> None:
    """Structured output beside tools (Anthropic allows both): the answer is a tool
    call or JSON of the schema, one grammar from llama.cpp's chat layer."""
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    m = client(server).messages.create(
        model="test-model", max_tokens=160, tools=[WEATHER], messages=[{"role": "user", "content": "2+2?"}],
        extra_body={**GREEDY, "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    uses = [b for b in m.content if b.type == "tool_use"]
    if uses:
        jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    elif m.stop_reason == "end_turn":
        text = "".join(b.text for b in m.content if b.type == "text").strip()
        jsonschema.validate(json.loads(text.removeprefix("```json").removesuffix("```")), schema)


def test_tool_result_round_trip(server: Server) -> None:
    """tool_use and tool_result blocks render like the same chat messages."""
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, {
                "type": "tool_use", "id": "toolu_1", "name": "get_weather",
                "input": {"city": "Paris", "unit": "celsius"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": [{"type": "text", "text": '{"temperature": 21}'}]}]}]
    m = client(server).messages.create(model="test-model", max_tokens=8, tools=[WEATHER], messages=msgs,
                                       extra_body=GREEDY)
    chat_msgs = [msgs[0], {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": '{"temperature": 21}'}]
    chat = server.client().chat.completions.create(model="test-model", messages=chat_msgs, tools=[CHAT_WEATHER],
                                                   max_tokens=8, temperature=0)
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == chat.usage.prompt_tokens
    if m.stop_reason != "tool_use":
        assert m.content[0].text == chat.choices[0].message.content
    if server.template == "hermes":
        prompt = server.post("/apply-template", {"messages": chat_msgs, "tools": [CHAT_WEATHER]}).json()["prompt"]
        assert '"city": "Paris"' in prompt and '{"temperature": 21}' in prompt


def test_stop_sequences(server: Server) -> None:
    plain = client(server).messages.create(model="test-model", max_tokens=30, messages=HELLO, extra_body=GREEDY)
    text = plain.content[0].text
    stop = text.strip()[1:3] if len(text.strip()) >= 3 else None
    if stop is None:
        pytest.skip(f"too short an answer: {text!r}")
    m = client(server).messages.create(model="test-model", max_tokens=30, messages=HELLO, extra_body=GREEDY,
                                       stop_sequences=["never-in-it", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop, m
    assert text.startswith(m.content[0].text) and stop not in m.content[0].text


@pytest.mark.parametrize("body, field", [
    ({"messages": HELLO}, "max_tokens"),
    ({"max_tokens": 0, "messages": HELLO}, "max_tokens"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file"}}]}]}, "messages[0].content[0].source"),
    ({"max_tokens": 5, "messages": HELLO, "tool_choice": {"type": "any"}}, "tool_choice"),
    ({"max_tokens": 5, "messages": HELLO, "tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice"),
    ({"max_tokens": 5, "messages": HELLO, "temperature": 3}, "temperature"),
    ({"max_tokens": 5, "messages": HELLO, "stop_sequences": [""]}, "stop_sequences"),
    ({"max_tokens": 5, "messages": HELLO, "thinking": {"type": "sometimes"}}, "thinking.type"),
])
def test_bad_input_answers_400_in_anthropics_shape(server: Server, body: dict[str, Any], field: str) -> None:
    r = server.post("/v1/messages", body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith(field), r.json()
    bad_json = server.post("/v1/messages", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["type"] == "error"
    with pytest.raises(anthropic.BadRequestError):
        client(server).messages.count_tokens(model="m", messages=[{"role": "tool", "content": "x"}])


def test_middleware_errors_in_anthropics_shape(server: Server) -> None:
    """A wrong key, a body that is not JSON, a foreign Host: answered before any route
    runs, still in Anthropic's shape on /v1/messages (OpenAI's elsewhere)."""
    cases = [({"Authorization": "Bearer wrong"}, None, 401, "authentication_error"),
             ({"content-type": "text/plain"}, b"{}", 415, "invalid_request_error"),
             ({"host": "evil.example"}, None, 403, "permission_error")]
    for headers, content, status, kind in cases:
        r = server.post("/v1/messages", {"max_tokens": 1, "messages": HELLO} if content is None else None,
                        headers=headers, **({"content": content} if content is not None else {}))
        assert r.status_code == status and r.json()["type"] == "error", r.text
        assert r.json()["error"]["type"] == kind
    other = server.post("/v1/chat/completions", None, headers={"host": "evil.example"})
    assert other.status_code == 403 and "param" in other.json()["error"]


def test_x_api_key(server: Server) -> None:
    """The anthropic client's own header, once the server's middleware accepts it."""
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)
    try:
        m = c.messages.create(model="m", max_tokens=2, messages=HELLO)
    except anthropic.AuthenticationError:
        pytest.skip("the server does not read X-Api-Key yet")
    assert m.usage.output_tokens <= 2


def test_thinking_blocks(small_q4_path: Path, tmp_path: Path) -> None:
    """Qwen3's thoughts come back as a thinking block before the text, whole and streamed."""
    srv = Server(small_q4_path, tmp_path / "think.log", "--ctx-size", "1024", "--parallel", "1",
                 "--chat-template-file", str(QWEN3), api_key=None)
    try:
        c = anthropic.Anthropic(base_url=srv.url, api_key="none", max_retries=0, timeout=60)
        kw: dict[str, Any] = dict(model="m", max_tokens=16, messages=[{"role": "user", "content": "Think."}],
                                  extra_body={"grammar": 'root ::= "<think>x</think>y"', **GREEDY})
        m = c.messages.create(**kw)
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in m.content] == [
            ("thinking", "x"), ("text", "y")]
        with c.messages.stream(**kw) as s:
            events = list(s)
            final = s.get_final_message()
        deltas = [e.delta for e in events if e.type == "content_block_delta"]
        assert "".join(d.thinking for d in deltas if d.type == "thinking_delta") == "x"
        assert "".join(d.text for d in deltas if d.type == "text_delta") == "y"
        assert [b.type for b in final.content] == ["thinking", "text"]
        msgs = [{"role": "user", "content": "Think."}]
        on = c.messages.count_tokens(model="m", messages=msgs, thinking={"type": "enabled", "budget_tokens": 1024})
        off = c.messages.count_tokens(model="m", messages=msgs, thinking={"type": "disabled"})
        assert off.input_tokens > on.input_tokens  # the empty think block of enable_thinking=false
    finally:
        assert srv.stop() == 0, srv.output()


def test_thinking_blocks_in_history_reach_the_template(tiny_path: Path, tmp_path: Path) -> None:
    """An assistant turn's thinking blocks become its reasoning_content (llama-server's), so
    a template that renders it counts them; redacted thinking is dropped."""
    tmpl = tmp_path / "think.jinja"
    tmpl.write_text("{% for m in messages %}{{ m.role }}: {% if m.reasoning_content %}<think>{{ m.reasoning_content }}"
                    "</think>{% endif %}{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    srv = Server(tiny_path, tmp_path / "server.log", "--chat-template-file", str(tmpl), api_key=None)
    try:
        def count(blocks: list[dict[str, Any]]) -> int:
            msgs = [{"role": "user", "content": "Fix it"}, {"role": "assistant", "content": blocks},
                    {"role": "user", "content": "Go on"}]
            r = srv.post("/v1/messages/count_tokens", {"model": "m", "messages": msgs})
            assert r.status_code == 200, r.text
            return int(r.json()["input_tokens"])

        text = [{"type": "text", "text": "Done."}]
        plain = count(text)
        assert count([{"type": "thinking", "thinking": "check the layout first", "signature": ""}, *text]) > plain
        assert count([{"type": "redacted_thinking", "data": "xyz"}, *text]) == plain
    finally:
        assert srv.stop() == 0, srv.output()
