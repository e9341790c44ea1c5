"""Responses API items <-> chat messages, and the bounded store of recent
responses that ``previous_response_id`` reads.

Input items (messages with ``input_text``/``output_text``/``input_image``
parts, ``function_call`` and ``function_call_output`` items; ``reasoning``
items are accepted and left out of the prompt) become OpenAI chat messages for
the chat layer; each bad field raises :class:`APIError` (400) naming it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request as HTTPRequest

from .errors import APIError, invalid_value, require_str

__all__ = ["items_to_messages", "output_to_items", "ResponseStore", "StoredResponse", "get_store",
           "STORE_SIZE"]

STORE_SIZE = 512  # responses kept for previous_response_id
ROLES = ("user", "system", "developer", "assistant")


def _part(part: Any, param: str) -> dict[str, Any]:
    """An OpenAI chat content part of a Responses content part."""
    if not isinstance(part, dict):
        raise invalid_value(param, "a content part must be an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": require_str(part.get("text"), param + ".text")}
    if kind == "refusal":
        return {"type": "text", "text": require_str(part.get("refusal"), param + ".refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if url is None:
            raise invalid_value(param + ".image_url", "an input_image needs an image_url (file_id is not supported)")
        return {"type": "image_url", "image_url": {"url": require_str(url, param + ".image_url")}}
    raise invalid_value(param + ".type", f"must be 'input_text', 'output_text' or 'input_image', got {kind!r}")


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise invalid_value(param + ".role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise invalid_value(param + ".content", "must be a string or a list of content parts")
    parts = [_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    if role != "user" and any(p["type"] != "text" for p in parts):
        raise invalid_value(param + ".content", f"a {role} message carries text only")
    if role != "user" or all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _call(item: dict[str, Any], param: str) -> dict[str, Any]:
    args = item.get("arguments")
    if isinstance(args, dict):
        args = json.dumps(args)
    return {"id": require_str(item.get("call_id"), param + ".call_id"), "type": "function",
            "function": {"name": require_str(item.get("name"), param + ".name"),
                         "arguments": require_str(args, param + ".arguments")}}


def _output(item: dict[str, Any], param: str) -> dict[str, Any]:
    out = item.get("output")
    if isinstance(out, list):
        out = "".join(_part(p, f"{param}.output[{j}]").get("text", "") for j, p in enumerate(out))
    return {"role": "tool", "tool_call_id": require_str(item.get("call_id"), param + ".call_id"),
            "content": require_str(out, param + ".output")}


def items_to_messages(items: list[Any], param: str = "input") -> list[dict[str, Any]]:
    """The chat messages of Responses input items (consecutive function calls join
    one assistant message). Raises :class:`APIError` (400) naming the bad field."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        p = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise invalid_value(p, "an input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, p))
        elif kind == "function_call":
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or (last.get("content") and "tool_calls" not in last):
                last = {"role": "assistant", "content": None, "tool_calls": []}
                messages.append(last)
            last.setdefault("tool_calls", []).append(_call(item, p))
        elif kind == "function_call_output":
            messages.append(_output(item, p))
        elif kind != "reasoning":
            raise invalid_value(p + ".type", "must be 'message', 'function_call', 'function_call_output' or "
                                    f"'reasoning', got {kind!r}")
    return messages


def output_to_items(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input items that stand for a response's output items. Never raises."""
    return [o for o in output if o.get("type") in ("message", "function_call", "reasoning")]


@dataclass
class StoredResponse:
    """A stored response: its body and every item of its conversation so far
    (earlier inputs and outputs, its input, its output; not ``instructions``)."""

    body: dict[str, Any]
    items: list[dict[str, Any]]


@dataclass
class ResponseStore:
    """The ``size`` most recent stored responses, by id (oldest dropped first)."""

    size: int = STORE_SIZE
    _data: OrderedDict[str, StoredResponse] = field(default_factory=OrderedDict)

    def put(self, rid: str, entry: StoredResponse) -> None:
        self._data[rid] = entry
        self._data.move_to_end(rid)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def get(self, rid: str, param: str = "previous_response_id", status: int = 400) -> StoredResponse:
        """The stored response ``rid``. Raises :class:`APIError` (``status``: 400 as
        OpenAI answers an unknown ``previous_response_id``) naming ``param`` when
        there is none (never stored, ``store: false``, or dropped)."""
        entry = self._data.get(rid)
        if entry is None:
            raise APIError(status, f"{param}: no stored response with id {rid!r} (unknown, stored with "
                                f"store=false, or dropped from the {self.size} kept)", param=param,
                           code="response_not_found", type="invalid_request_error")
        return entry


def get_store(raw: HTTPRequest) -> ResponseStore:
    """The FastAPI dependency giving the app's :class:`ResponseStore` (made on first use)."""
    store: ResponseStore | None = getattr(raw.app.state, "responses", None)
    if store is None:
        store = raw.app.state.responses = ResponseStore()
    return store
