"""The chat pipeline of :class:`cortex_llama.LLM`: from OpenAI-shaped messages and
options to a prompt, a grammar and an output parser, all from llama.cpp's chat
layer (:mod:`cortex_llama.chat`), and back to a :class:`ChatCompletion` or a
stream of :class:`ChatDelta`.

What a request may carry besides the messages is :class:`ChatOptions`: tools,
tool_choice (``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function",
"function": {"name": ...}}``), parallel_tool_calls, response_format (``text``,
``json_object``, ``json_schema``), and the reasoning controls (reasoning_format,
enable_thinking, reasoning_effort, chat_template_kwargs).

A named tool_choice is sent to llama.cpp as ``required`` with only that tool.
Where llama.cpp cannot force a call with the template (it returns no grammar for
``required``, and llama-server answers free text), :mod:`cortex_llama.tool_polyfill`
describes the tools in the system message and forces a Hermes call by grammar;
everything else renders exactly as llama-server renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence, Union

from . import content as media_content
from . import tool_polyfill
from .chat import (REASONING_FORMATS, ChatDelta, ChatParser, ChatPrompt, ChatTemplates, check_schema,
                   schema_to_grammar)
from .errors import ChatRequestError, GrammarError
from .gen.params import FINISH_EOG, FINISH_STOP, Completion
from .gen.policy import GrammarConstraint
from .gen.request import AsyncTextStream, Request, TextStream
from .multimodal import Projector

__all__ = ["ChatOptions", "ChatCompletion", "ToolCall", "ChatPlan", "plan_chat", "split_options",
           "finish_chat", "OutputParser", "ChatDelta", "ChatStream", "AsyncChatStream"]

Messages = Sequence[Mapping[str, Any]]
OutputParser = Union[ChatParser, tool_polyfill.HermesParser]


@dataclass
class ChatOptions:
    """Chat-only options of ``LLM.chat`` and friends (beside GenerationParams)."""

    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: Union[str, Mapping[str, Any]] = "auto"
    parallel_tool_calls: bool | None = None
    response_format: Mapping[str, Any] | None = None
    reasoning_format: str = "auto"  # llama-server's --reasoning-format default
    enable_thinking: bool | None = None  # None: on when the template supports it
    reasoning_effort: str | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: Any = None
    media_policy: media_content.MediaPolicy | None = None  # local media files: None reads any path

    def __post_init__(self) -> None:
        if self.reasoning_format not in REASONING_FORMATS:
            raise ChatRequestError(f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}, "
                                   f"got {self.reasoning_format!r}")
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, Mapping):
            raise ChatRequestError("chat_template_kwargs must be a dict")


_OPTION_NAMES = frozenset(f.name for f in fields(ChatOptions))


def split_options(overrides: Mapping[str, Any]) -> tuple[ChatOptions, dict[str, Any]]:
    """(the chat options among ``overrides``, the rest: GenerationParams fields)."""
    opts = {k: v for k, v in overrides.items() if k in _OPTION_NAMES}
    rest = {k: v for k, v in overrides.items() if k not in _OPTION_NAMES}
    return ChatOptions(**opts), rest


@dataclass
class ToolCall:
    """One function call the assistant made; ``arguments`` is JSON text."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ChatCompletion(Completion):
    """A :class:`Completion` of a chat: ``text`` is the raw output, parsed into
    ``content``, ``reasoning_content`` and ``tool_calls`` by llama.cpp's parser of
    the template's format."""

    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    @classmethod
    def from_message(cls, done: Completion, message: Mapping[str, Any]) -> ChatCompletion:
        calls = [ToolCall(id=c.get("id", ""), name=c["function"]["name"], arguments=c["function"]["arguments"])
                 for c in message.get("tool_calls") or []]
        content = message.get("content")
        if isinstance(content, list):  # typed parts: join their text
            content = "".join(p.get("text", "") for p in content)
        return cls(text=done.text, tokens=done.tokens, finish_reason=done.finish_reason, usage=done.usage,
                   timings=done.timings, logprobs=done.logprobs, content=content or ("" if not calls else None),
                   reasoning_content=message.get("reasoning_content") or None, tool_calls=calls)


def _check_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ChatRequestError("tools must be a list of {'type': 'function', 'function': {...}} objects")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise ChatRequestError(f"{where} must be {{'type': 'function', 'function': {{...}}}}")
        fn = tool.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ChatRequestError(f"{where}.function must be an object with a non-empty 'name'")
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, Mapping) or
                                   params.get("type", "object") != "object"):
            raise ChatRequestError(f"{where}.function.parameters must be a JSON schema of type 'object', "
                                   f"got {json.dumps(params)[:80]}")
        out.append({"type": "function", "function": dict(fn)})
    return out


def _resolve_tool_choice(choice: Union[str, Mapping[str, Any]], tools: list[dict[str, Any]]
                         ) -> tuple[str, list[dict[str, Any]]]:
    """(llama.cpp's tool_choice, the tools it may call)."""
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ChatRequestError(f"tool_choice must be 'auto', 'none', 'required' or "
                                   f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}")
        if choice == "required" and not tools:
            raise ChatRequestError("tool_choice 'required' needs tools")
        return choice, tools
    if not isinstance(choice, Mapping) or not isinstance(choice.get("function"), Mapping):
        raise ChatRequestError("tool_choice must name a function as {'type': 'function', "
                               "'function': {'name': ...}}")
    name = choice["function"].get("name")
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise ChatRequestError(f"tool_choice.function.name {name!r} is not among the tools "
                               f"({', '.join(t['function']['name'] for t in tools) or 'none given'})")
    return "required", chosen


def _response_schema(response_format: Mapping[str, Any] | None) -> Any:
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return response_format.get("schema") or {"type": "object"}
    if kind == "json_schema":
        wrapper = response_format.get("json_schema")
        if not isinstance(wrapper, Mapping) or not isinstance(wrapper.get("schema", {}), Mapping):
            raise ChatRequestError("response_format.json_schema must be {'name': ..., 'schema': {...}}")
        return wrapper.get("schema") or {"type": "object"}
    raise ChatRequestError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}")


def _check_history(messages: Messages) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatRequestError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ChatRequestError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatRequestError(f"messages[{i}] must be a dict, not {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            raise ChatRequestError(f"messages[{i}] has no 'role' string")
        for j, call in enumerate(m.get("tool_calls") or ()):
            args = (call.get("function") or {}).get("arguments") if isinstance(call, Mapping) else None
            if isinstance(args, str) and args.strip():
                try:
                    json.loads(args)
                except json.JSONDecodeError as exc:
                    raise ChatRequestError(f"messages[{i}].tool_calls[{j}].function.arguments is not "
                                           f"valid JSON: {exc}") from None


@dataclass
class ChatPlan:
    """Everything one chat request needs from the template, ready for the engine."""

    prompt: ChatPrompt
    media: list[Any]  # bitmaps, in marker order
    constraint: GrammarConstraint | None
    stops: tuple[str, ...]
    preserved_tokens: tuple[int, ...]
    new_parser: Callable[[bool], OutputParser]  # streaming -> a fresh output parser


def _shim_request(messages: Messages, opts: ChatOptions, tools: list[dict[str, Any]], tool_choice: str,
                  schema: Any, grammar: str | None) -> dict[str, Any]:
    req: dict[str, Any] = {"messages": list(messages), "reasoning_format": opts.reasoning_format,
                           "add_generation_prompt": opts.add_generation_prompt}
    if tools:
        req["tools"], req["tool_choice"] = tools, tool_choice
    for key in ("parallel_tool_calls", "enable_thinking", "reasoning_effort", "chat_template_kwargs",
                "continue_final_message"):
        value = getattr(opts, key)
        if value is not None:
            req[key] = dict(value) if isinstance(value, Mapping) else value
    if schema is not None:
        req["json_schema"] = schema
    if grammar:
        req["grammar"] = grammar
    return req


def plan_chat(templates: ChatTemplates, messages: Messages, opts: ChatOptions, *,
              json_schema: Any = None, grammar: str | None = None,
              projector: Projector | None = None) -> ChatPlan:
    """Render ``messages`` with ``opts`` (and a GenerationParams' json_schema or
    grammar) through llama.cpp's chat layer.

    Raises :class:`ChatRequestError` naming the bad field, :class:`TemplateError`
    when the template raises, :class:`MediaError` for unusable media.
    """
    _check_history(messages)
    tools = _check_tools(opts.tools) if opts.tools else []
    tool_choice, tools = _resolve_tool_choice(opts.tool_choice, tools)
    use_tools = bool(tools) and tool_choice != "none"
    for i, tool in enumerate(tools):
        if tool["function"].get("parameters"):
            check_schema(tool["function"]["parameters"], f"tools[{i}].function.parameters")
    schema = _response_schema(opts.response_format)
    if schema is not None and json_schema is not None:
        raise ChatRequestError("give response_format or json_schema, not both")
    schema = schema if schema is not None else json_schema
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise GrammarError(f"json_schema is not valid JSON: {exc}") from None
    if schema is not None:  # converted once alone, so that its errors name the schema's field
        schema_to_grammar(schema, "response_format" if opts.response_format is not None else "json_schema")
    if use_tools and grammar:
        raise ChatRequestError("tools: a grammar cannot be combined with tools")
    # a json_schema with tools goes to llama.cpp's chat layer, which builds one grammar
    # of both (a call or the schema's JSON) where the template has tool syntax
    media: list[Any] = []
    if media_content.has_media(messages):
        messages, media = media_content.split_media(messages, projector, opts.media_policy)
    prompt = templates.apply(_shim_request(messages, opts, tools, tool_choice, schema, grammar))
    if tool_choice == "required" and not prompt.grammar:
        # llama.cpp cannot force a call with this template (llama-server answers free
        # text): honour the constraint through the polyfill instead of dropping it
        return _polyfilled(templates, messages, opts, tools, media)
    constraint = None
    if prompt.grammar:
        grammar = prompt.grammar
        if not prompt.grammar_lazy and prompt.generation_prompt:
            # llama.cpp feeds the generation prompt's tokens to the grammar, which
            # starts with it as a literal. Tokenizers that add a space after a special
            # token make those pieces differ from the text (the grammar then throws in
            # C++). The literal is dropped from the root rule instead: the same language
            # for what is generated, nothing to feed.
            grammar = _without_generation_prompt(grammar, prompt.generation_prompt)
        constraint = GrammarConstraint(grammar, prompt.grammar_lazy, tuple(prompt.trigger_patterns),
                                       tuple(prompt.trigger_tokens))
    legacy = opts.reasoning_format == "deepseek-legacy"

    def new_parser(streaming: bool) -> OutputParser:
        return ChatParser(prompt.parser, reasoning_in_content=streaming and legacy)

    return ChatPlan(prompt, media, constraint, tuple(prompt.additional_stops),
                    tuple(prompt.preserved_token_ids), new_parser)


def _gbnf_literal(text: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(ch, ch) for ch in text) + '"'


def _without_generation_prompt(grammar: str, generation_prompt: str) -> str:
    """``grammar`` with the generation prompt's literal dropped from the start of its
    root rule. Raises :class:`GrammarError` when the root does not start with it."""
    head = "root ::= " + _gbnf_literal(generation_prompt)
    lines = grammar.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(head + " ") or line == head:
            lines[i] = "root ::= " + (line[len(head):].strip() or '""')
            return "\n".join(lines)
    raise GrammarError("the template's grammar does not start with its generation prompt "
                       f"{generation_prompt!r}; cannot constrain this output")


def _polyfilled(templates: ChatTemplates, messages: Messages, opts: ChatOptions, tools: list[dict[str, Any]],
                media: list[Any]) -> ChatPlan:
    """The plan of a forced call with a template that cannot express one: see
    :mod:`cortex_llama.tool_polyfill`."""
    inlined = tool_polyfill.inline_tools(messages, tools)
    prompt = templates.apply(_shim_request(inlined, opts, [], "none", None, None))
    constraint = GrammarConstraint(tool_polyfill.forced_call_grammar([t["function"] for t in tools]))
    names = [t["function"]["name"] for t in tools]

    def new_parser(streaming: bool) -> OutputParser:
        return tool_polyfill.HermesParser(names, strict=True)

    return ChatPlan(prompt, media, constraint, tuple(prompt.additional_stops),
                    tuple(prompt.preserved_token_ids), new_parser)


def finish_chat(parser: OutputParser, done: Completion) -> ChatCompletion:
    """Parse a finished output (a :class:`ChatCompletion` with the message's parts).

    An output cut short (``length``, ``cancelled``) is parsed as partial, as it
    would be mid-stream. Raises :class:`TemplateError` when a complete output
    does not match the template's format, and :class:`ChatRequestError` when a
    forced tool call of the polyfill does not parse.
    """
    complete = done.finish_reason in (FINISH_EOG, FINISH_STOP)
    parser.feed(done.text, partial=not complete)
    return ChatCompletion.from_message(done, parser.message)


def _cut_short(request: Request) -> bool:
    """Whether a stream's output ended short (``length``, ``cancelled``): its end is
    then parsed as partial, as :func:`finish_chat` parses the whole answer, so a
    forced call cut by ``max_tokens`` ends the stream with ``length`` (no call), not
    an error."""
    return request.finish_reason not in (FINISH_EOG, FINISH_STOP)



class ChatStream(Iterator[ChatDelta]):
    """Typed deltas of a streamed chat: content, reasoning and tool-call pieces, as
    llama.cpp's parser finds them in the growing output. ``close()`` (or leaving
    the loop and dropping the stream) cancels the request."""

    def __init__(self, request: Request, parser: OutputParser) -> None:
        self.request = request
        self._text = TextStream(request)
        self._parser = parser
        self._pending: list[ChatDelta] = []
        self._ended = False

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatDelta:
        while not self._pending:
            if self._ended:
                raise StopIteration
            piece = next(self._text, None)
            if piece is None:
                self._ended = True
                self._pending = self._parser.feed("", partial=_cut_short(self.request))
            else:
                self._pending = self._parser.feed(piece)
        return self._pending.pop(0)

    @property
    def message(self) -> dict[str, Any]:
        """The message parsed so far (all of it once the stream has ended)."""
        return self._parser.message

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncChatStream(AsyncIterator[ChatDelta]):
    """:class:`ChatStream` for ``async for`` (no thread per request)."""

    def __init__(self, request: Request, parser: OutputParser) -> None:
        self.request = request
        self._text = AsyncTextStream(request)
        self._parser = parser
        self._pending: list[ChatDelta] = []
        self._ended = False

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> ChatDelta:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                piece = await self._text.__anext__()
            except StopAsyncIteration:
                self._ended = True
                self._pending = self._parser.feed("", partial=_cut_short(self.request))
                continue
            self._pending = self._parser.feed(piece)
        return self._pending.pop(0)

    @property
    def message(self) -> dict[str, Any]:
        return self._parser.message

    async def aclose(self) -> None:
        await self._text.aclose()
