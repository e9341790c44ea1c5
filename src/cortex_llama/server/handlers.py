"""The app's exception handlers: every error is answered with an OpenAI-style
body (:class:`APIError`), a request validation error as 400 naming the field."""

from __future__ import annotations

import re
import sys
from typing import Sequence, Union

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HTTPRequest

from .errors import APIError, from_exception
from .schemas import UNION_MEMBER_NAMES

__all__ = ["install_handlers", "validation_error", "error_response"]


def _loc_to_param(loc: Sequence[Union[int, str]]) -> str | None:
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in UNION_MEMBER_NAMES or "[" in part or "-" in part:
            continue  # a union member's or validator's name, not a field
        else:
            out += ("." if out else "") + part
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    """The 400 :class:`APIError` of a pydantic validation error, naming the field."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body", code="invalid_request")
    e = errors[0]
    if len(errors) > 1:  # the members of a union each complain: the deepest one is the cause
        same_field = [x for x in errors if tuple(x.get("loc", ()))[:2] == tuple(e.get("loc", ()))[:2]]
        e = max(same_field, key=lambda x: len(x.get("loc", ())))
    if e.get("type") == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {detail}".rstrip(": "),
                        code="invalid_json")
    loc = [p for p in e.get("loc", ()) if isinstance(p, (int, str))]
    param = _loc_to_param(loc)
    msg = str(e.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    named = re.match(r"([a-z_][a-z_0-9.\[\]]*): ", msg)
    if named and e.get("type") == "value_error":  # a model validator names the field itself
        param = ".".join(p for p in (param, named.group(1)) if p)
        return APIError(400, msg if msg.startswith(param) else f"{param}: {msg[named.end():]}", param=param,
                        code="invalid_value")
    if param is None and e.get("type") == "model_attributes_type":
        return APIError(400, "the request body must be a JSON object", code="invalid_request")
    if e.get("type") == "missing":
        msg = "field required"
    text = msg if param is None or msg.startswith(param.split(".")[-1].split("[")[0] + ":") else f"{param}: {msg}"
    return APIError(400, text, param=param, code="invalid_value")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _api_error(_: HTTPRequest, exc: Exception) -> JSONResponse:
    return error_response(from_exception(exc))


async def _invalid(_: HTTPRequest, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc))


async def _http_error(raw: HTTPRequest, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        msg = ("the request body nests JSON deeper than the parser's limit (about "
               f"{sys.getrecursionlimit()} levels)")
        return error_response(APIError(400, msg, code="invalid_json"))
    if exc.status_code == 404:
        msg = f"no route {raw.method} {raw.url.path}"
    elif exc.status_code == 405:
        msg = f"method {raw.method} not allowed on {raw.url.path}"
    else:
        msg = str(exc.detail)
    return error_response(APIError(exc.status_code, msg, code="http_error", headers=dict(exc.headers or {})))


def install_handlers(app: FastAPI) -> None:
    """Answer :class:`APIError`, validation errors, HTTP errors and any other
    exception of ``app``'s routes with OpenAI-style error bodies."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _api_error)
