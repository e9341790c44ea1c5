"""Convert a JSON schema into a GBNF grammar that only admits JSON valid against it.

Supported: ``type`` (object, array, string, integer, number, boolean, null, and
lists of types), ``properties`` with ``required`` (optional properties may be
left out; they keep the declared order), ``items`` with ``minItems``/``maxItems``,
``enum``, ``const``, ``anyOf``/``oneOf``, ``minLength``/``maxLength``, and local
``$ref`` into ``$defs``/``definitions``. Objects admit no extra properties.

Numbers and strings without bounds are bounded by the grammar only where JSON
needs it (an integer has at most 16 digits); give ``maxLength``/``maxItems`` to
keep generation short.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import GrammarError

__all__ = ["schema_to_gbnf"]

_PRIMITIVES = {
    "ws": '[ ]?',
    # any character but the quote, the backslash and controls; surrogates and values
    # past U+10FFFF are excluded because llama.cpp's grammar decodes such invalid UTF-8
    "char": r'[^"\\\x00-\x1f\uD800-\uDFFF\U00110000-\U003FFFFF] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ([0-9] | [1-9] [0-9]{1,15})',
    "number": r'integer ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
}
_DEPENDS = {"string": ["char"], "number": ["integer"]}


def _literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
        .replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class _Converter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self._refs: dict[str, str] = {}

    def _use(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            for dep in _DEPENDS.get(name, ()):
                self._use(dep)
        return name

    def _add(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower() or "r"
        name, i = base, 1
        while name in self.rules and self.rules[name] != body:
            i += 1
            name = f"{base}-{i}"
        self.rules[name] = body
        return name

    def _resolve(self, ref: str) -> tuple[str, dict[str, Any]]:
        m = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if not m:
            raise GrammarError(f"unsupported $ref {ref!r}: only #/$defs/NAME and #/definitions/NAME")
        target = self.root.get(m.group(1), {}).get(m.group(2))
        if not isinstance(target, dict):
            raise GrammarError(f"$ref {ref!r} points to nothing")
        return m.group(2), target

    def visit(self, schema: Any, hint: str) -> str:
        """The name of a rule (or an inline expression) matching ``schema``."""
        if schema is True or schema == {}:
            raise GrammarError(f"schema at {hint!r} admits any value; give it a type")
        if not isinstance(schema, dict):
            raise GrammarError(f"schema at {hint!r} must be an object, not {type(schema).__name__}")
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self._refs:
                name, target = self._resolve(ref)
                rule = self._add(name, "")  # reserve: recursive schemas refer to it
                self._refs[ref] = rule
                self.rules[rule] = self.visit(target, name)
            return self._refs[ref]
        if "const" in schema:
            return self._add(hint, _literal(json.dumps(schema["const"])))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError(f"enum at {hint!r} must be a non-empty list")
            return self._add(hint, " | ".join(_literal(json.dumps(v)) for v in values))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise GrammarError(f"{key} at {hint!r} must be a non-empty list")
                return self._add(hint, " | ".join(self.visit(a, f"{hint}-{i}") for i, a in enumerate(alts)))
        typ = schema.get("type")
        if isinstance(typ, list):
            return self._add(hint, " | ".join(self.visit({**schema, "type": t}, f"{hint}-{t}") for t in typ))
        if typ == "object" or (typ is None and "properties" in schema):
            return self._object(schema, hint)
        if typ == "array":
            return self._array(schema, hint)
        if typ == "string":
            return self._string(schema, hint)
        if typ in ("integer", "number", "boolean", "null"):
            return self._use(typ)
        raise GrammarError(f"unsupported or missing type {typ!r} at {hint!r}")

    def _string(self, schema: dict[str, Any], hint: str) -> str:
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema or "format" in schema:
            raise GrammarError(f"string 'pattern'/'format' at {hint!r} is not supported")
        if lo == 0 and hi is None:
            return self._use("string")
        self._use("char")
        if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
            raise GrammarError(f"invalid minLength/maxLength at {hint!r}: {lo}, {hi}")
        reps = f"{{{lo},{'' if hi is None else hi}}}"
        return self._add(hint, f'"\\"" char{reps} "\\""')

    def _array(self, schema: dict[str, Any], hint: str) -> str:
        items = schema.get("items")
        if items is None:
            raise GrammarError(f"array at {hint!r} needs 'items'")
        item = self.visit(items, f"{hint}-item")
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
            raise GrammarError(f"invalid minItems/maxItems at {hint!r}: {lo}, {hi}")
        ws = self._use("ws")
        if hi == 0:
            return self._add(hint, f'"[" {ws} "]"')
        more_lo = max(lo - 1, 0)
        more_hi = "" if hi is None else str(hi - 1)
        seq = f'{item} ("," {ws} {item}){{{more_lo},{more_hi}}}'
        body = f'"[" {ws} {seq} {ws} "]"' if lo >= 1 else f'"[" {ws} ({seq})? {ws} "]"'
        return self._add(hint, body)

    def _object(self, schema: dict[str, Any], hint: str) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise GrammarError(f"'properties' at {hint!r} must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            raise GrammarError(f"'required' at {hint!r} names properties that are not defined: "
                               f"{[r for r in required if r not in props] if isinstance(required, list) else required}")
        ws = self._use("ws")
        names = list(props)
        kvs = [f'{_literal(json.dumps(k))} {ws} ":" {ws} {self.visit(props[k], f"{hint}-{k}")}'
               for k in names]
        memo: dict[tuple[int, bool], str] = {}

        def rest(i: int, first: bool) -> str:
            """Rule for properties i.. ; ``first``: nothing was written before."""
            if i == len(names):
                return ""
            key = (i, first)
            if key in memo:
                return memo[key]
            sep = "" if first else f'"," {ws} '
            take = f"{sep}{kvs[i]} {rest(i + 1, False)}".strip()
            if names[i] in required:
                body = take
            else:
                skip = rest(i + 1, first)
                body = f"({take})" + (f" | ({skip})" if skip else " | \"\"")
            memo[key] = self._add(f"{hint}-p{i}{'f' if first else ''}", body)
            return memo[key]

        inner = rest(0, True)
        return self._add(hint, f'"{{" {ws} {inner} {ws} "}}"' if inner else f'"{{" {ws} "}}"')


def schema_to_gbnf(schema: dict[str, Any] | str) -> str:
    """A GBNF grammar (root rule ``root``) for JSON documents valid against ``schema``.

    ``schema`` is a dict or a JSON string. Raises :class:`GrammarError` for an
    invalid or unsupported schema.
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"json_schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarError(f"json_schema must be an object, not {type(schema).__name__}")
    conv = _Converter(schema)
    top = conv.visit(schema, "root-value")
    lines = [f"root ::= {top}"]
    lines += [f"{name} ::= {body}" for name, body in conv.rules.items()]
    return "\n".join(lines) + "\n"
