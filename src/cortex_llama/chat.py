"""llama.cpp's own chat layer (``common/chat.h``), through our C shim libcortex-chat.

* :class:`ChatTemplates`: a model's chat templates (or an override), rendered by
  llama.cpp's Jinja engine with its polyfills, exactly as llama-server renders them.
  :meth:`ChatTemplates.apply` takes an OpenAI-shaped request (messages with
  ``tool_calls`` and ``role: "tool"``, tools, tool_choice, json_schema, reasoning
  controls, template kwargs) and returns a :class:`ChatPrompt`: the prompt and what
  generation needs from the template (a grammar, lazy or not, its triggers,
  preserved tokens, additional stops, and the parameters of the output parser).
* :class:`ChatParser`: parses an assistant's output, whole or as it streams, into
  ``content``, ``reasoning_content`` and ``tool_calls`` with llama.cpp's parser for
  that template's format, and yields OpenAI-shaped deltas.
* :func:`schema_to_grammar`: llama.cpp's JSON-schema-to-GBNF converter.
* :func:`builtin_templates`: the names of llama.cpp's built-in templates.

Every call goes through :func:`_call`, the one status check of the shim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ._base import Owned
from ._lib import chat_lib, chat_missing, ffi, lib
from .errors import ChatRequestError, GrammarError, LlamaError, TemplateError

if TYPE_CHECKING:
    from .model import Model

__all__ = ["ChatTemplates", "ChatPrompt", "ChatParser", "ChatDelta", "schema_to_grammar", "check_schema",
           "builtin_templates", "REASONING_FORMATS", "SCHEMA_KEYWORDS", "SCHEMA_FORMATS"]

#: ``reasoning_format`` values (llama-server's ``--reasoning-format``)
REASONING_FORMATS = ("none", "auto", "deepseek", "deepseek-legacy")


def _shim() -> Any:
    if chat_lib is None:
        raise LlamaError(chat_missing)
    return chat_lib


def _take_string(ptr: Any) -> str:
    if ptr == ffi.NULL:
        return ""
    try:
        return ffi.string(ptr).decode("utf-8", errors="replace")
    finally:
        _shim().cortex_chat_string_free(ptr)


def _call(fn: Callable[[Any], int], what: str,
          invalid: type[LlamaError] = ChatRequestError) -> str:
    """Run one shim call that writes a string to its last argument, and check its status.

    Raises ``invalid`` (default :class:`ChatRequestError`) when the shim rejects the
    input, :class:`TemplateError` when the template fails otherwise.
    """
    out = ffi.new("char **")
    rc = fn(out)
    text = _take_string(out[0])
    if rc == _shim().CORTEX_CHAT_OK:
        return text
    if rc == _shim().CORTEX_CHAT_INVALID:
        raise invalid(f"{what}: {text}")
    raise TemplateError(f"{what}: {text}")


def _encode(request: Mapping[str, Any], what: str) -> bytes:
    try:
        return json.dumps(request, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise ChatRequestError(f"{what} is not JSON-serializable: {exc}") from None


@dataclass
class ChatPrompt:
    """What :meth:`ChatTemplates.apply` returns (llama.cpp's ``common_chat_params``)."""

    prompt: str
    format: int
    format_name: str
    grammar: str = ""
    grammar_lazy: bool = False
    grammar_triggers: list[dict[str, str]] = field(default_factory=list)
    trigger_patterns: list[str] = field(default_factory=list)  # regexes for a lazy grammar
    trigger_tokens: list[int] = field(default_factory=list)  # token ids for a lazy grammar
    preserved_tokens: list[str] = field(default_factory=list)
    preserved_token_ids: list[int] = field(default_factory=list)  # printed even when special
    additional_stops: list[str] = field(default_factory=list)
    generation_prompt: str = ""
    supports_thinking: bool = False
    thinking_start_tag: str = ""
    thinking_end_tags: list[str] = field(default_factory=list)
    enable_thinking: bool = False
    parser: dict[str, Any] = field(default_factory=dict)  # ChatParser's parameters

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatPrompt:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class ChatTemplates(Owned):
    """A model's chat templates as llama.cpp loads them (``common_chat_templates_init``).

    ``template`` overrides the model's: Jinja source, or the name of one of
    llama.cpp's built-in templates (``"llama3"``, ``"chatml"``, ...: rendered by
    ``llama_chat_apply_template``, without tools). A model without a template gets
    llama.cpp's fallback (ChatML).
    Holds its model; ``close()`` is idempotent, and it is a context manager.

    Raises :class:`TemplateError` for a template that does not parse and
    :class:`LlamaError` when libcortex-chat was not built.
    """

    _kind = "chat template"

    def __init__(self, model: Model, template: str | None = None) -> None:
        shim = _shim()
        self.model = model
        #: False for a built-in template name (llama.cpp's legacy, non-Jinja route)
        self.use_jinja = True
        if template is not None and "{" not in template:
            names = builtin_templates()
            if template not in names:
                raise TemplateError(f"unknown chat template name {template!r}; built-in names: "
                                    f"{', '.join(names)} (or give a Jinja template)")
            self.use_jinja = False
        handle = ffi.new("struct cortex_chat_templates **")
        override = (template or "").encode()
        mptr = model.handle
        _call(lambda out: shim.cortex_chat_templates_init(mptr, override, b"", b"", handle, out),
              "chat template", invalid=TemplateError)
        self._own(handle[0], shim.cortex_chat_templates_free)
        model._adopt(self)
        self._info: dict[str, Any] | None = None

    @property
    def info(self) -> dict[str, Any]:
        """``caps`` (what the template supports), ``supports_thinking``, ``source``,
        ``tool_use_source`` and ``was_explicit``."""
        if self._info is None:
            ptr = self._check()
            self._info = json.loads(_call(lambda out: _shim().cortex_chat_templates_info(ptr, out),
                                          "chat template info"))
        return self._info

    @property
    def source(self) -> str:
        return str(self.info["source"])

    def apply(self, request: Mapping[str, Any]) -> ChatPrompt:
        """Render an OpenAI-shaped request as llama-server does for
        ``/v1/chat/completions`` (keys: messages, tools, tool_choice
        ("auto"/"none"/"required"), parallel_tool_calls, json_schema, grammar,
        add_generation_prompt, continue_final_message, reasoning_format,
        reasoning_effort, enable_thinking, chat_template_kwargs, prefill_assistant).

        Raises :class:`ChatRequestError` naming the bad field, and
        :class:`TemplateError` when the template raises while rendering.
        """
        ptr = self._check()
        if not self.use_jinja:
            request = {**request, "use_jinja": False}
        body = _encode(request, "the chat request")
        vocab = self.model.vocab.handle
        text = _call(lambda out: _shim().cortex_chat_apply(ptr, vocab, body, out), "chat template")
        return ChatPrompt.from_json(json.loads(text))


@dataclass
class ChatDelta:
    """One OpenAI-shaped piece of a streamed assistant message."""

    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{index, id?, type?, function}]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatDelta:
        return cls(content=data.get("content", ""), reasoning_content=data.get("reasoning_content", ""),
                   tool_calls=list(data.get("tool_calls", [])))


class ChatParser(Owned):
    """llama.cpp's parser of one assistant output (``common_chat_parse``), fed as it grows.

    ``params`` is :attr:`ChatPrompt.parser`; ``reasoning_in_content`` keeps thoughts
    inline (llama-server does so for ``deepseek-legacy`` when streaming).
    :meth:`feed` returns the deltas since the last call; :attr:`message` is the
    message parsed so far (``role``, ``content``, ``reasoning_content``, ``tool_calls``).

    Raises :class:`ChatRequestError` for bad parameters.
    """

    _kind = "chat parser"

    def __init__(self, params: Mapping[str, Any], *, reasoning_in_content: bool = False) -> None:
        shim = _shim()
        body = _encode({**params, "reasoning_in_content": reasoning_in_content}, "the parser parameters")
        handle = ffi.new("struct cortex_chat_parser **")
        _call(lambda out: shim.cortex_chat_parser_init(body, handle, out), "chat parser")
        self._own(handle[0], shim.cortex_chat_parser_free)
        self.message: dict[str, Any] = {"role": "assistant", "content": ""}

    def feed(self, text: str, *, partial: bool = True) -> list[ChatDelta]:
        """Add ``text`` to the output and parse it all (``partial=False`` for the
        last call). Raises :class:`TemplateError` when the finished output does
        not match the template's format (e.g. a tool call whose arguments are not
        JSON), :class:`ClosedError` after close."""
        ptr = self._check()
        data = text.encode()
        result = json.loads(_call(lambda out: _shim().cortex_chat_parser_feed(ptr, data, int(partial), out),
                                  "chat output"))
        self.message = result["message"]
        return [ChatDelta.from_json(d) for d in result["deltas"]]


#: the JSON-schema keywords llama.cpp's converter turns into grammar (common/json-schema.cpp)
SCHEMA_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "pattern", "format", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"})
#: keywords that constrain nothing (annotations)
SCHEMA_ANNOTATIONS = frozenset({
    "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
    "readOnly", "writeOnly", "strict"})
#: string formats the converter expresses
SCHEMA_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})


def _subschemas(schema: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            out.append((f"/{key}/{name}", sub))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key) or []):
            out.append((f"/{key}/{i}", sub))
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, Mapping):
            out.append((f"/{key}", sub))
    return out


def check_schema(schema: Any, where: str = "json_schema") -> None:
    """Raise :class:`GrammarError` naming the first constraint of ``schema`` that
    llama.cpp's converter would not express (it would accept anything there):
    an unknown keyword, a string format it lacks, a regex pattern it cannot
    translate. Annotations (title, description, ...) are fine."""
    stack: list[tuple[str, Any]] = [("", schema)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, Mapping):
            raise GrammarError(f"{where}{path or '/'}: a schema must be an object, not {type(node).__name__}")
        for key in node:
            if key not in SCHEMA_KEYWORDS and key not in SCHEMA_ANNOTATIONS:
                raise GrammarError(f"{where}{path}: the keyword {key!r} cannot be expressed by llama.cpp's "
                                   f"JSON-schema converter (it would be dropped); supported: "
                                   f"{', '.join(sorted(SCHEMA_KEYWORDS))}")
        fmt = node.get("format")
        if fmt is not None and fmt not in SCHEMA_FORMATS:
            raise GrammarError(f"{where}{path}: format {fmt!r} cannot be expressed (supported: "
                               f"{', '.join(sorted(SCHEMA_FORMATS))})")
        pattern = node.get("pattern")
        # an untranslatable pattern comes back as the plain string rule
        if isinstance(pattern, str) and "root ::= string\n" in _convert({"type": "string", "pattern": pattern}):
            raise GrammarError(f"{where}{path}: pattern {pattern!r} cannot be expressed by llama.cpp's "
                               "regex translation (it would accept any string)")
        stack.extend((path + sub_path, sub) for sub_path, sub in _subschemas(node))


def _convert(schema: Any) -> str:
    body = json.dumps(schema).encode()
    text = _call(lambda out: _shim().cortex_chat_schema_to_grammar(body, out), "json_schema",
                 invalid=GrammarError)
    return str(json.loads(text)["grammar"])


def schema_to_grammar(schema: Mapping[str, Any] | str, where: str = "json_schema") -> str:
    """GBNF for a JSON schema, by llama.cpp's converter (``json_schema_to_grammar``).

    Raises :class:`GrammarError` naming what the converter cannot express (see
    :func:`check_schema`; ``where`` is the field named): a constraint is never
    dropped silently.
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise GrammarError(f"json_schema is not valid JSON: {exc}") from None
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"json_schema is not JSON-serializable: {exc}") from None
    check_schema(schema, where)
    return _convert(schema)


def builtin_templates() -> list[str]:
    """Names of the chat templates llama.cpp implements natively."""
    n = lib.llama_chat_builtin_templates(ffi.NULL, 0)
    arr = ffi.new("const char *[]", max(n, 1))
    lib.llama_chat_builtin_templates(arr, n)
    return [ffi.string(arr[i]).decode() for i in range(n)]
