"""Forced tool calls for chat templates that cannot express them (SmolLM2's, for one).

llama.cpp's chat layer renders tools only through templates that describe them;
for other templates it returns no grammar for ``tool_choice="required"``, and
llama-server then answers free text: the constraint is dropped. We honour it:

* the tools are described in the system message, asking for Hermes
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks; earlier
  calls are written back as such blocks and tool results as
  ``<tool_response>`` user turns (:func:`inline_tools`);
* a forced call (``required`` or a named function) is constrained by a grammar
  built with llama.cpp's JSON-schema converter (:func:`forced_call_grammar`);
* :class:`HermesParser` reads that one format, with the interface of
  :class:`cortex_llama.chat.ChatParser`.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Mapping, Sequence

from .chat import ChatDelta, schema_to_grammar
from .errors import ChatRequestError, GrammarError

__all__ = ["inline_tools", "forced_call_grammar", "HermesParser", "OPEN", "CLOSE"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def _call_text(call: Mapping[str, Any]) -> str:
    fn = call.get("function") or {}
    args = fn.get("arguments") or {}
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    return OPEN + "\n" + json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False) \
        + "\n" + CLOSE


def inline_tools(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Messages for a template without tools: tools described in the system message,
    calls as ``<tool_call>`` text, tool results as ``<tool_response>`` user turns."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    intro = ("You can call functions. Their signatures, as JSON schemas, are:\n<tools>\n" + lines
             + "\n</tools>\nTo call a function, answer with a block " + OPEN
             + '{"name": <function name>, "arguments": <arguments as a JSON object>}' + CLOSE
             + " for each call.")
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], _text(m.get("content"))
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        elif m.get("tool_calls"):
            out.append({"role": "assistant", "content": content + "".join(_call_text(c) for c in m["tool_calls"])})
        else:
            out.append({**m, "role": role})
    if out and out[0]["role"] in ("system", "developer") and isinstance(out[0].get("content"), str):
        out[0] = {"role": out[0]["role"], "content": out[0]["content"] + "\n\n" + intro}
    else:
        out.insert(0, {"role": "system", "content": intro})
    return out


def _text(content: Any) -> str:
    """A message content as text: parts (text and media markers) joined by newlines."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return content or ""


def _literal(text: str) -> str:
    return json.dumps(text)


def forced_call_grammar(functions: Sequence[Mapping[str, Any]]) -> str:
    """GBNF admitting exactly one Hermes call of one of ``functions`` (OpenAI
    ``function`` objects) with arguments valid for its ``parameters``.

    Raises :class:`GrammarError` naming what llama.cpp's converter cannot express.
    """
    if not functions:
        raise GrammarError("tools: no function to call")
    alternatives = []
    for f in functions:
        params = dict(f.get("parameters") or {"type": "object", "properties": {}})
        alternatives.append({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": params},
                             "required": ["name", "arguments"]})
    schema: dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    gbnf = schema_to_grammar(schema)
    body = re.sub(r"^root ::=", "call ::=", gbnf, count=1, flags=re.M)
    return f"root ::= {_literal(OPEN + chr(10))} call {_literal(chr(10) + CLOSE)}\n{body}"


class HermesParser:
    """Streams content, holding back what may start a ``<tool_call>`` block, and
    parses the blocks of known tools at the end (same interface as ChatParser).

    ``feed(partial=False)`` raises :class:`ChatRequestError` when a forced call's
    arguments are not a JSON object (``strict``)."""

    def __init__(self, tool_names: Sequence[str], *, strict: bool = False) -> None:
        self._names = set(tool_names)
        self._strict = strict
        self._text = ""
        self._sent = 0
        self._capturing = False
        self.message: dict[str, Any] = {"role": "assistant", "content": ""}

    def _safe_content(self) -> str:
        if self._capturing:
            return ""
        i = self._text.find(OPEN, self._sent)
        if i >= 0:
            self._capturing = True
            out, self._sent = self._text[self._sent:i], i
            return out
        hold = 0
        for k in range(min(len(OPEN) - 1, len(self._text) - self._sent), 0, -1):
            if OPEN.startswith(self._text[-k:]):
                hold = k
                break
        end = len(self._text) - hold
        out, self._sent = self._text[self._sent:end], end
        return out

    def feed(self, text: str, *, partial: bool = True) -> list[ChatDelta]:
        self._text += text
        deltas: list[ChatDelta] = []
        content = self._safe_content()
        calls: list[dict[str, Any]] = []
        if not partial:
            rest, calls = self._finish()
            content += rest
        if content:
            deltas.append(ChatDelta(content=content))
            self.message["content"] += content
        if calls:
            self.message["tool_calls"] = calls
            deltas.append(ChatDelta(tool_calls=[{"index": i, **c} for i, c in enumerate(calls)]))
        return deltas

    def _finish(self) -> tuple[str, list[dict[str, Any]]]:
        rest = self._text[self._sent:]
        self._sent = len(self._text)
        calls: list[dict[str, Any]] = []
        content: list[str] = []
        pos = 0
        for m in re.finditer(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", rest, re.S):
            call = self._as_call(m.group(1).strip())
            if call is None:
                continue
            content.append(rest[pos:m.start()])
            pos = m.end()
            calls.append(call)
        if self._strict and not calls:
            raise ChatRequestError(f"the forced tool call did not parse: {rest[:200]!r}")
        content.append(rest[pos:])
        return ("".join(content).strip() if calls else rest), calls

    def _as_call(self, body: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in self._names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        return {"id": secrets.token_hex(16), "type": "function",
                "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}
