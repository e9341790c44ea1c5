"""Tool calls: messages and tools for the chat template, parsing calls out of the
output, and grammars that force a valid call.

Formats parsed out of a model's output (the format is chosen from the chat
template: a template that mentions ``<tool_call>`` is Hermes, one that mentions
``<|python_tag|>`` or ``ipython`` is Llama 3.x; otherwise both are tried):

* **Hermes / Qwen**: one or more ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks; text outside the blocks is the message content.
* **Llama 3.x JSON**: the whole output (optionally after ``<|python_tag|>``) is
  ``{"name": ..., "parameters": {...}}`` (``"arguments"`` is accepted too), or
  several such objects separated by ``;`` or in a JSON list.

Only calls of functions listed in ``tools`` count; anything else stays content.

With ``tool_choice="required"`` or a named function, generation is constrained
by a GBNF grammar (built with :func:`cortex_llama.json_schema.schema_to_gbnf`)
to exactly one call in the template's format whose arguments are valid JSON for
that function's ``parameters`` schema.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import GrammarError
from ..json_schema import schema_to_gbnf

__all__ = ["HERMES", "LLAMA3", "ParsedCall", "detect_format", "parse_tool_calls", "tool_call_grammar",
           "template_messages", "inline_tools", "ToolStreamSplitter", "JSON_GRAMMAR", "new_call_id"]

HERMES = "hermes"
LLAMA3 = "llama3"

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"

# any JSON value whose top level is an object (response_format json_object)
JSON_GRAMMAR = r"""root ::= object
value ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,3} )?
ws ::= [ \t\n]{0,8}
"""


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def detect_format(template: str | None) -> str | None:
    """The tool-call format a chat template asks for: HERMES, LLAMA3, or None (unknown)."""
    if not template:
        return None
    if _HERMES_OPEN in template:
        return HERMES
    if _PYTHON_TAG in template or "ipython" in template:
        return LLAMA3
    return None


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as chat templates expect them.

    ``content`` parts are joined into one string (``None`` becomes ``""``),
    ``developer`` becomes ``system``, and each tool call's ``arguments`` string
    is parsed into an object (Hermes, Qwen and Llama templates serialize it with
    ``tojson``). Raises ``ValueError`` naming the message for arguments that
    are not a JSON object.
    """
    out = []
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {"role": "system" if m["role"] == "developer" else m["role"],
                               "content": m.get("content") or ""}
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = m[key]
        calls = m.get("tool_calls")
        if calls:
            conv = []
            for j, c in enumerate(calls):
                fn = c["function"]
                args = fn["arguments"]
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"messages[{i}].tool_calls[{j}].function.arguments is not "
                                         f"valid JSON: {exc}") from None
                if not isinstance(args, dict):
                    raise ValueError(f"messages[{i}].tool_calls[{j}].function.arguments must be a "
                                     "JSON object")
                conv.append({"id": c.get("id") or new_call_id(), "type": "function",
                             "function": {"name": fn["name"], "arguments": args}})
            msg["tool_calls"] = conv
        out.append(msg)
    return out


def inline_tools(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Messages for a chat template that knows nothing of tools: the tools are
    described in the system message (asking for Hermes ``<tool_call>`` blocks),
    earlier calls become ``<tool_call>`` text and tool results user messages
    holding ``<tool_response>`` blocks."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    intro = ("You can call functions. Their signatures, as JSON schemas, are:\n<tools>\n" + lines
             + "\n</tools>\nTo call a function, answer with a block " + _HERMES_OPEN
             + '{"name": <function name>, "arguments": <arguments as a JSON object>}' + _HERMES_CLOSE
             + " for each call.")
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        elif m.get("tool_calls"):
            blocks = "".join(_HERMES_OPEN + json.dumps({"name": c["function"]["name"],
                                                        "arguments": c["function"]["arguments"]},
                                                       ensure_ascii=False) + _HERMES_CLOSE
                             for c in m["tool_calls"])
            out.append({"role": "assistant", "content": content + blocks})
        else:
            out.append({"role": role, "content": content})
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + intro}
    else:
        out.insert(0, {"role": "system", "content": intro})
    return out


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------
def _as_call(obj: Any, names: set[str]) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _parse_hermes(text: str, names: set[str]) -> tuple[str, list[ParsedCall]] | None:
    if _HERMES_OPEN not in text:
        return None
    calls: list[ParsedCall] = []
    content: list[str] = []
    pos = 0
    for m in re.finditer(re.escape(_HERMES_OPEN) + r"(.*?)(?:" + re.escape(_HERMES_CLOSE) + r"|$)",
                         text, re.S):
        try:
            call = _as_call(json.loads(m.group(1).strip()), names)
        except json.JSONDecodeError:
            call = None
        if call is None:
            continue  # not a call of a known tool: leave it in the content
        content.append(text[pos:m.start()])
        pos = m.end()
        calls.append(call)
    if not calls:
        return None
    content.append(text[pos:])
    return "".join(content).strip(), calls


def _parse_llama3(text: str, names: set[str]) -> tuple[str, list[ParsedCall]] | None:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    if not body.startswith(("{", "[")):
        return None
    objs: list[Any]
    try:
        parsed = json.loads(body)
        objs = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        try:
            objs = [json.loads(part) for part in body.split(";") if part.strip()]
        except json.JSONDecodeError:
            return None
    calls = [_as_call(o, names) for o in objs]
    if not calls or any(c is None for c in calls):
        return None
    return "", [c for c in calls if c is not None]


def parse_tool_calls(text: str, tool_names: Sequence[str], fmt: str | None = None
                     ) -> tuple[str, list[ParsedCall]]:
    """Split model output into (content, calls). Without calls, content is ``text``."""
    names = set(tool_names)
    parsers = {HERMES: [_parse_hermes], LLAMA3: [_parse_llama3]}.get(fmt or "", [_parse_hermes, _parse_llama3])
    for parse in parsers:
        res = parse(text, names)
        if res is not None:
            return res
    return text, []


class ToolStreamSplitter:
    """Streams content deltas while holding back whatever may be a tool call.

    Content is passed on until a tool-call marker can start (``<tool_call>``
    anywhere for Hermes, ``{``/``[``/``<|python_tag|>`` at the very start for
    Llama 3.x); from there on the text is buffered and parsed at the end.
    """

    def __init__(self, fmt: str | None) -> None:
        self.fmt = fmt
        self.sent = 0  # characters of the output passed on as content
        self.text = ""
        self.capturing = False

    def feed(self, delta: str) -> str:
        """Returns the part of the output that is surely content."""
        self.text += delta
        if self.capturing:
            return ""
        if self.fmt in (None, LLAMA3) and self.sent == 0:
            head = self.text.lstrip()
            if not head:
                return ""
            if head[0] in "{[" or _PYTHON_TAG.startswith(head[:len(_PYTHON_TAG)]):
                if head[0] in "{[" or head.startswith(_PYTHON_TAG):
                    self.capturing = True
                return ""
        if self.fmt in (None, HERMES):
            i = self.text.find(_HERMES_OPEN, self.sent)
            if i >= 0:
                out, self.sent, self.capturing = self.text[self.sent:i], i, True
                return out
            # hold back a suffix that may start the marker
            hold = 0
            for k in range(min(len(_HERMES_OPEN) - 1, len(self.text) - self.sent), 0, -1):
                if _HERMES_OPEN.startswith(self.text[-k:]):
                    hold = k
                    break
            end = len(self.text) - hold
            out, self.sent = self.text[self.sent:end], end
            return out
        out, self.sent = self.text[self.sent:], len(self.text)
        return out

    def finish(self, tool_names: Sequence[str]) -> tuple[str, list[ParsedCall]]:
        """(content not yet passed on, calls) once the output is complete."""
        rest = self.text[self.sent:]
        if not self.capturing:
            return rest, []
        content, calls = parse_tool_calls(rest, tool_names, self.fmt)
        if not calls:
            return rest, []
        return content, calls


# ---------------------------------------------------------------------------
# grammars
# ---------------------------------------------------------------------------
def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tool_call_grammar(functions: Sequence[Mapping[str, Any]], fmt: str | None) -> str:
    """A GBNF grammar admitting exactly one call of one of ``functions`` (each
    ``{"name": ..., "parameters": schema}``) in format ``fmt`` (Hermes when
    unknown). Raises :class:`GrammarError` for a parameters schema the converter
    cannot handle."""
    if not functions:
        raise GrammarError("no functions to call")
    key = "parameters" if fmt == LLAMA3 else "arguments"
    defs: dict[str, Any] = {}
    alternatives = []
    for f in functions:
        params = dict(f.get("parameters") or {"type": "object", "properties": {}})
        for dkey in ("$defs", "definitions"):
            for name, d in (params.pop(dkey, None) or {}).items():
                if name in defs and defs[name] != d:
                    raise GrammarError(f"tools: functions define $defs/{name} differently")
                defs[name] = d
        if params.get("type") == "object" and "properties" not in params:
            params["properties"] = {}
        alternatives.append({"type": "object", "properties": {"name": {"const": f["name"]}, key: params},
                             "required": ["name", key]})
    schema: dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    if defs:
        schema = {**schema, "$defs": defs}
    gbnf = schema_to_gbnf(schema)
    first, _, rest = gbnf.partition("\n")
    call = first.split("::=", 1)[1].strip()
    if fmt == LLAMA3:
        root = f"root ::= {call}"
    else:
        root = f"root ::= {_literal(_HERMES_OPEN + chr(10))} {call} {_literal(chr(10) + _HERMES_CLOSE)}"
    return root + "\n" + rest
