"""Clients no one here wrote, each with its default model name, against one real
``cortex-llama serve`` subprocess: the official ``openai`` client (``gpt-4o-mini``),
``anthropic`` (a Claude name), LangChain's ``ChatOpenAI`` (its default,
``gpt-3.5-turbo``) and ``OpenAIEmbeddings``, and LiteLLM (``openai/gpt-4o-mini``
with ``api_base``). No mocks.

The model is the small synthetic one with its ChatML template, which cannot
express tools: a forced call goes through the polyfill (a grammar from llama.cpp's
schema converter), so it comes at once, and structured output is a grammar too,
so every answer validates however random the weights. Greedy answers are compared
across clients (the same request gives the same text).

Offline: LiteLLM is imported with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and
``LITELLM_OFFLINE_MODE=true`` (it fetches a cost map at import otherwise);
``OpenAIEmbeddings`` gets ``check_embedding_ctx_length=False`` (else it tokenizes
with tiktoken, which downloads its encoding, and sends OpenAI's token ids, which
mean nothing to another vocabulary: llama-server needs the same setting).
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest

from .helpers import HTTP_TIMEOUT, KEY, Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")
jsonschema = pytest.importorskip("jsonschema")

# the tests that make many forced calls are slow (~3-30 s each on 2 busy cores); the
# server fixes' tests, embeddings and the quick LiteLLM ones are not
pytestmark = [pytest.mark.server,
              pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning"),  # litellm's types
              pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm")]

CALL_TOKENS = 300  # room for a forced call or a JSON answer (the grammar allows some whitespace)


class Person(pydantic.BaseModel):
    """A person."""

    name: str = pydantic.Field(max_length=10)
    age: int
    mood: Literal["happy", "sad"]


WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                   "unit": {"enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": WEATHER_PARAMS}}
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(small_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """4 slots, embeddings, an API key; the model's own (ChatML) template."""
    srv = Server(small_path, tmp_path_factory.mktemp("clients") / "server.log", "--ctx-size", "8192",
                 "--parallel", "4", "--embeddings")
    srv.model_id = srv.client().models.list().data[0].id  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.output()


def reference(server: Server, messages: list[dict[str, Any]], max_tokens: int, **kw: Any) -> Any:
    """The plain greedy chat answer, by httpx (what every client should get)."""
    r = server.post("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def check_weather(name: str, args: Any) -> None:
    assert name == "get_weather"
    jsonschema.validate(json.loads(args) if isinstance(args, str) else args, WEATHER_PARAMS)


# ---------------------------------------------------------------------------
# openai: the helpers that parse (structured output, strict tools), async, streams
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_openai_parse_helpers(server: Server) -> None:
    client = server.client()
    msgs = [{"role": "user", "content": "A person, as JSON."}]
    r = client.chat.completions.parse(model="gpt-4o-mini", messages=msgs, response_format=Person,
                                      max_tokens=CALL_TOKENS, temperature=0)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and r.choices[0].finish_reason == "stop" and r.model == server.model_id
    with client.chat.completions.stream(model="gpt-4o-mini", messages=msgs, response_format=Person,
                                        max_tokens=CALL_TOKENS, temperature=0) as stream:
        kinds = {e.type for e in stream}
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == person and "content.done" in kinds
    # a strict function tool from a pydantic model, forced
    tool = openai.pydantic_function_tool(Person)
    r = client.chat.completions.parse(model="gpt-4o-mini", messages=msgs, tools=[tool], tool_choice="required",
                                      max_tokens=CALL_TOKENS, temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "Person"
    assert isinstance(call.function.parsed_arguments, Person)


@pytest.mark.slow
def test_openai_responses_parse_and_streamed_call(server: Server) -> None:
    client = server.client()
    r = client.responses.parse(model="gpt-4o-mini", input="A person, as JSON.", text_format=Person,
                               max_output_tokens=CALL_TOKENS, temperature=0)
    assert isinstance(r.output_parsed, Person) and r.status == "completed"
    tool = {"type": "function", **WEATHER["function"]}
    with client.responses.stream(model="gpt-4o-mini", input="Weather in Paris?", tools=[tool],
                                 tool_choice="required", max_output_tokens=CALL_TOKENS, temperature=0) as stream:
        args = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    (call,) = [o for o in final.output if o.type == "function_call"]
    assert call.arguments == args
    check_weather(call.name, args)


def test_openai_async_stream_equals_plain(server: Server) -> None:
    want = reference(server, HI, 16)["message"]["content"]

    async def go() -> tuple[str, str]:
        client = server.aclient()
        try:
            plain = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=16,
                                                         temperature=0)
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=16,
                                                          temperature=0, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content or "", text
        finally:
            await client.close()

    assert asyncio.run(asyncio.wait_for(go(), HTTP_TIMEOUT)) == (want, want)


class Count(pydantic.BaseModel):
    n: int


def test_openai_stream_helper_assembles_the_plain_message(server: Server) -> None:
    """The stream helper's final message equals the plain one: a forced call and
    ``content`` None (the first delta carries ``content: null``, as llama-server's)."""
    client = server.client()
    kw: dict[str, Any] = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "Count."}], temperature=0,
                              tools=[openai.pydantic_function_tool(Count)], tool_choice="required",
                              max_tokens=CALL_TOKENS)
    plain = client.chat.completions.parse(**kw).choices[0].message
    with client.chat.completions.stream(**kw) as stream:
        kinds = {e.type for e in stream}
        final = stream.get_final_completion().choices[0].message
    assert plain.content is None and final.content is None and "content.delta" not in kinds
    assert "tool_calls.function.arguments.done" in kinds
    assert [c.function.parsed_arguments for c in final.tool_calls] == [c.function.parsed_arguments
                                                                      for c in plain.tool_calls]
    assert isinstance(final.tool_calls[0].function.parsed_arguments, Count)


def test_forced_call_cut_by_max_tokens_streams_like_plain(server: Server) -> None:
    """A forced call cut short by max_tokens: streamed, it ends with ``length`` and no
    call, as the plain answer does (it used to end the stream with an error)."""
    client = server.client()
    kw: dict[str, Any] = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}],
                              tools=[WEATHER], tool_choice="required", max_tokens=6, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0]
    assert plain.finish_reason == "length" and not plain.message.tool_calls
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (plain.message.content or "")
    events = list(client.responses.create(model="gpt-4o-mini", input="Weather in Paris?", stream=True,
                                          tools=[{"type": "function", **WEATHER["function"]}],
                                          tool_choice="required", max_output_tokens=6, temperature=0))
    assert events[-1].type == "response.incomplete" or events[-1].response.status == "incomplete", events[-1]


# ---------------------------------------------------------------------------
# anthropic, with a Claude model name
# ---------------------------------------------------------------------------
CLAUDE = "claude-sonnet-4-5"
GREEDY = {"temperature": 0}  # (this client has no temperature argument)
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER_PARAMS}


@pytest.mark.slow
def test_anthropic_claude(server: Server) -> None:
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=HTTP_TIMEOUT)
    want = reference(server, HI, 16)
    m = c.messages.create(model=CLAUDE, max_tokens=16, messages=HI, extra_body=GREEDY)
    assert m.model == server.model_id and m.content[0].text == want["message"]["content"]
    with c.messages.stream(model=CLAUDE, max_tokens=16, messages=HI, extra_body=GREEDY) as s:
        assert "".join(s.text_stream) == m.content[0].text
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    m = c.messages.create(model=CLAUDE, max_tokens=CALL_TOKENS, messages=ask, tools=[ANTHROPIC_WEATHER],
                          tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use"
    check_weather(use.name, use.input)
    # the tool's result goes back in the client's own shapes; an answer comes
    msgs = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C, sunny"}]}]
    again = c.messages.create(model=CLAUDE, max_tokens=8, messages=msgs, tools=[ANTHROPIC_WEATHER], extra_body=GREEDY)
    assert again.stop_reason in ("end_turn", "max_tokens", "tool_use")
    n_ask = c.messages.count_tokens(model=CLAUDE, messages=ask).input_tokens  # (tools: not in this template)
    # input_tokens leaves out the prompt tokens read from the cache (Anthropic's and llama-server's usage)
    prompt = again.usage.input_tokens + (again.usage.cache_read_input_tokens or 0)
    assert prompt == c.messages.count_tokens(model=CLAUDE, messages=msgs,
                                             tools=[ANTHROPIC_WEATHER]).input_tokens > n_ask + 8

    async def streamed(max_tokens: int) -> Any:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key=KEY, max_retries=0,
                                            timeout=HTTP_TIMEOUT) as ac:
            async with ac.messages.stream(model=CLAUDE, max_tokens=max_tokens, messages=ask,
                                          tools=[ANTHROPIC_WEATHER], tool_choice={"type": "any"},
                                          extra_body=GREEDY) as s:
                return await s.get_final_message()

    final = asyncio.run(streamed(CALL_TOKENS))
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use"
    check_weather(use.name, use.input)
    cut = asyncio.run(streamed(6))  # a forced call cut short: max_tokens, no error event
    assert cut.stop_reason == "max_tokens" and not [b for b in cut.content if b.type == "tool_use"]


class Mood(pydantic.BaseModel):
    """Bounded without string lengths: the anthropic client moves ``maxLength`` (and
    ``minimum``...) into the description, and a random model's string never ends."""

    mood: Literal["happy", "sad"]
    age: int
    sure: bool


def test_anthropic_structured_output(server: Server) -> None:
    """``messages.parse(output_format=...)`` sends ``output_config.format``: a JSON
    schema the answer follows (llama-server ignores it and answers free text)."""
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=HTTP_TIMEOUT)
    ask = [{"role": "user", "content": "A mood, as JSON."}]
    m = c.messages.parse(model=CLAUDE, max_tokens=CALL_TOKENS, messages=ask, output_format=Mood, extra_body=GREEDY)
    assert isinstance(m.parsed_output, Mood) and m.stop_reason == "end_turn"
    beta = server.post("/v1/messages", {"model": CLAUDE, "max_tokens": CALL_TOKENS, "messages": ask, **GREEDY,
                                        "output_format": {"type": "json_schema", "schema": Mood.model_json_schema()}})
    assert Mood.model_validate_json(beta.json()["content"][0]["text"]) == m.parsed_output
    bad = {"type": "json_schema", "schema": {"type": "frobnicate"}}
    for body in ({"output_config": {"format": bad}}, {"output_format": bad},
                 {"output_config": {"format": {"type": "xml", "schema": {}}}}):
        r = server.post("/v1/messages", {"model": CLAUDE, "max_tokens": 4, "messages": ask, **body})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(next(iter(body))), r.text


# ---------------------------------------------------------------------------
# LangChain: ChatOpenAI (chat, streams, bind_tools, with_structured_output), OpenAIEmbeddings
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lc() -> Any:
    return pytest.importorskip("langchain_openai")


def chat_model(lc: Any, server: Server, **kw: Any) -> Any:
    kw.setdefault("max_tokens", CALL_TOKENS)
    return lc.ChatOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, temperature=0,
                         timeout=HTTP_TIMEOUT, **kw)


@pytest.mark.slow
def test_langchain_chat_and_streams(lc: Any, server: Server) -> None:
    llm = chat_model(lc, server, max_tokens=16)
    assert llm.model_name == "gpt-3.5-turbo"  # ChatOpenAI's default
    want = reference(server, HI, 16)["message"]["content"]
    msg = llm.invoke(HI)
    assert msg.content == want and msg.response_metadata["model_name"] == server.model_id
    assert msg.usage_metadata["output_tokens"] <= 16
    assert "".join(c.content for c in llm.stream(HI)) == want
    chunks = list(llm.stream(HI, stream_usage=True))  # (off by default with a base_url)
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert whole.content == want and whole.usage_metadata["output_tokens"] == msg.usage_metadata["output_tokens"]

    async def go() -> tuple[str, str]:
        a = await llm.ainvoke(HI)
        return a.content, "".join([c.content async for c in llm.astream(HI)])

    assert asyncio.run(asyncio.wait_for(go(), HTTP_TIMEOUT)) == (want, want)
    # the Responses API path
    resp = chat_model(lc, server, max_tokens=16, use_responses_api=True).invoke(HI)
    assert resp.text == want


@pytest.mark.slow
def test_langchain_bind_tools(lc: Any, server: Server) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = chat_model(lc, server)
    ask = [HumanMessage("Weather in Paris?")]
    for choice in ("get_weather", "any"):  # a named function, "required"
        msg = llm.bind_tools([WEATHER], tool_choice=choice).invoke(ask)
        (call,) = msg.tool_calls
        check_weather(call["name"], call["args"])
        assert msg.response_metadata["finish_reason"] == "tool_calls" and call["id"]
    acc = None
    for chunk in llm.bind_tools([WEATHER], tool_choice="get_weather").stream(ask):
        acc = chunk if acc is None else acc + chunk
    (call,) = acc.tool_calls
    check_weather(call["name"], call["args"])
    # the call and its result go back as LangChain messages; an answer comes
    out = llm.bind_tools([WEATHER]).invoke([*ask, msg, ToolMessage("21 C, sunny", tool_call_id=msg.tool_calls[0]["id"])])
    assert out.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    n_ask = server.post("/v1/chat/completions/input_tokens", {"messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert out.usage_metadata["input_tokens"] > n_ask.json()["input_tokens"] + 8  # (tools: not in this template)
    resp = chat_model(lc, server, use_responses_api=True).bind_tools([WEATHER], tool_choice="get_weather").invoke(ask)
    (call,) = resp.tool_calls
    check_weather(call["name"], call["args"])


@pytest.mark.slow
def test_langchain_structured_output(lc: Any, server: Server) -> None:
    ask = "A person, as JSON."
    with warnings.catch_warnings():  # gpt-3.5-turbo: LangChain switches json_schema to function_calling
        warnings.simplefilter("ignore", UserWarning)
        got = chat_model(lc, server).with_structured_output(Person).invoke(ask)
    assert isinstance(got, Person)
    for method in ("function_calling", "json_schema"):
        llm = chat_model(lc, server, model="gpt-4o-mini")  # a model LangChain lets use json_schema
        out = llm.with_structured_output(Person, method=method, include_raw=True).invoke(ask)
        assert out["parsing_error"] is None and isinstance(out["parsed"], Person), out
        raw = out["raw"]
        assert bool(raw.tool_calls) == (method == "function_calling"), raw
        as_dict = llm.with_structured_output(Person.model_json_schema(), method=method).invoke(ask)
        jsonschema.validate(as_dict, Person.model_json_schema())
    resp = chat_model(lc, server, model="gpt-4o-mini", use_responses_api=True)
    assert isinstance(resp.with_structured_output(Person).invoke(ask), Person)


def test_langchain_embeddings(lc: Any, server: Server) -> None:
    np = pytest.importorskip("numpy")
    emb = lc.OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                              check_embedding_ctx_length=False)
    want = server.client().embeddings.create(model="x", input=["first text", "second"], encoding_format="float")
    docs = emb.embed_documents(["first text", "second"])
    assert np.allclose(docs, [d.embedding for d in want.data], atol=1e-5)
    assert np.allclose(emb.embed_query("first text"), want.data[0].embedding, atol=1e-5)
    assert np.allclose(asyncio.run(emb.aembed_query("second")), want.data[1].embedding, atol=1e-5)


# ---------------------------------------------------------------------------
# LiteLLM: openai/gpt-4o-mini with api_base (and its Anthropic provider)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def litellm(server: Server) -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost map from the internet
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    return pytest.importorskip("litellm")


def lite(server: Server, **kw: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "api_base": server.url + "/v1", "api_key": KEY, "temperature": 0,
            "num_retries": 0, "timeout": HTTP_TIMEOUT, **kw}


def test_litellm_completion_and_streams(litellm: Any, server: Server) -> None:
    want = reference(server, HI, 16)["message"]["content"]
    r = litellm.completion(messages=HI, **lite(server, max_tokens=16))
    assert r.choices[0].message.content == want and r.usage.completion_tokens <= 16
    chunks = list(litellm.completion(messages=HI, stream=True, **lite(server, max_tokens=16)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want

    async def go() -> tuple[str, str]:
        a = await litellm.acompletion(messages=HI, **lite(server, max_tokens=16))
        s = await litellm.acompletion(messages=HI, stream=True, **lite(server, max_tokens=16))
        return a.choices[0].message.content, "".join([c.choices[0].delta.content or "" async for c in s])

    assert asyncio.run(asyncio.wait_for(go(), HTTP_TIMEOUT)) == (want, want)
    counted = list(litellm.completion(messages=HI, stream=True, stream_options={"include_usage": True},
                                      **lite(server, max_tokens=16)))
    assert counted[-1].usage.completion_tokens == r.usage.completion_tokens
    resp = litellm.responses(input="Say hello.", max_output_tokens=16, **lite(server))
    assert resp.output[0].content[0].text == want
    # LiteLLM's Anthropic provider speaks /v1/messages
    m = litellm.completion(model=f"anthropic/{CLAUDE}", api_base=server.url, api_key=KEY, messages=HI,
                           max_tokens=16, temperature=0, num_retries=0)
    assert m.choices[0].message.content == want


def test_litellm_tools_and_structured_output(litellm: Any, server: Server) -> None:
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = litellm.completion(messages=ask, tools=[WEATHER], tool_choice=named, **lite(server, max_tokens=CALL_TOKENS))
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    check_weather(call.function.name, call.function.arguments)
    chunks = list(litellm.completion(messages=ask, tools=[WEATHER], tool_choice="required", stream=True,
                                     **lite(server, max_tokens=CALL_TOKENS)))
    whole = litellm.stream_chunk_builder(chunks, messages=ask)
    (call,) = whole.choices[0].message.tool_calls
    check_weather(call.function.name, call.function.arguments)
    r = litellm.completion(messages=[{"role": "user", "content": "A person, as JSON."}], response_format=Person,
                           **lite(server, max_tokens=CALL_TOKENS))
    Person.model_validate_json(r.choices[0].message.content)


def test_litellm_embedding(litellm: Any, server: Server) -> None:
    np = pytest.importorskip("numpy")
    want = server.client().embeddings.create(model="x", input=["first text", "second"], encoding_format="float")
    kw = {"model": "openai/text-embedding-3-small", "api_base": server.url + "/v1", "api_key": KEY}
    r = litellm.embedding(input=["first text", "second"], **kw)
    assert np.allclose([d["embedding"] for d in r.data], [d.embedding for d in want.data], atol=1e-5)
    a = asyncio.run(litellm.aembedding(input=["second"], **kw))
    assert np.allclose(a.data[0]["embedding"], want.data[1].embedding, atol=1e-5)


# ---------------------------------------------------------------------------
# the real model: a LangChain tool loop
# ---------------------------------------------------------------------------
@pytest.mark.real
def test_real_model_langchain_tool_loop(lc: Any, real_model_path: Path, tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct Q4_1 through ChatOpenAI: a forced call, the tool's
    result as a ToolMessage, then an answer in words."""
    from langchain_core.messages import HumanMessage, ToolMessage

    srv = Server(real_model_path, tmp_path / "real.log", "--ctx-size", "4096", "--parallel", "2")
    try:
        llm = chat_model(lc, srv, max_tokens=128)
        history: list[Any] = [HumanMessage("What is the weather in Paris?")]
        call_msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke(history)
        (call,) = call_msg.tool_calls
        check_weather(call["name"], call["args"])
        history += [call_msg, ToolMessage('{"temperature": 21, "sky": "clear"}', tool_call_id=call["id"])]
        answer = llm.bind_tools([WEATHER]).invoke(history)
        assert isinstance(answer.content, str) and answer.content.strip() and not answer.tool_calls
    finally:
        assert srv.stop() == 0, srv.output()
