"""OpenAI-style error bodies and the mapping from library exceptions to HTTP statuses.

Every error the server answers has the body
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..errors import (ChatRequestError, ClosedError, GrammarError, LlamaError, MediaError, QueueFullError,
                      TemplateError)

__all__ = ["APIError", "anthropic_error", "error_body", "from_exception", "exceed_context", "invalid_value", "require_str",
           "RETRY_AFTER_S"]

RETRY_AFTER_S = 1  # seconds a client is told to wait when the queue is full

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 415: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "server_overloaded",
          500: "server_error"}


class APIError(Exception):
    """An HTTP error answered with an OpenAI-style body.

    ``param`` names the request field at fault (``"messages[0].content"``),
    ``code`` a short machine-readable reason; ``extra`` fields go into the error
    object beside them (llama-server's ``n_prompt_tokens`` and ``n_ctx``).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        body = error_body(self.message, self.type, self.param, self.code)
        body["error"].update(self.extra)
        return body


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_value(param: str, message: str) -> APIError:
    """A 400 for the field ``param`` (its message starts with the field's name)."""
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def require_str(value: Any, param: str) -> str:
    """``value`` when it is a string; raises :func:`invalid_value` naming ``param`` else."""
    if not isinstance(value, str):
        raise invalid_value(param, f"must be a string, got {type(value).__name__}")
    return value


def exceed_context(n_prompt: int, n_ctx: int, param: str = "prompt") -> APIError:
    """llama-server's 400 for a prompt that does not fit a slot's context: type
    ``exceed_context_size_error`` with ``n_prompt_tokens`` and ``n_ctx``."""
    return APIError(400, f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), "
                         "try increasing it (--ctx-size)", param=param, code="exceed_context_size",
                    type="exceed_context_size_error", extra={"n_prompt_tokens": n_prompt, "n_ctx": n_ctx})


# GenerationParams field named in a ValueError -> the request field it came from
_PARAM_FIELDS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
                 "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                 "stop": "stop", "seed": "seed", "logprobs": "logprobs", "logit_bias": "logit_bias",
                 "grammar": "grammar", "json_schema": "response_format"}


def from_exception(exc: BaseException, *, prompt_param: str = "prompt",
                   grammar_param: str | None = None) -> APIError:
    """The :class:`APIError` for an exception raised while validating or running
    a request: bad values are 400 naming the field, a full queue 503 with
    ``Retry-After``, an unloaded model 503, anything else 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(503, f"the server is busy: {exc}", code="queue_full",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, ClosedError):
        return APIError(503, f"the model is not loaded: {exc}", code="model_not_loaded",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, MediaError):
        return APIError(400, str(exc), param="messages", code="invalid_media")
    if isinstance(exc, FileNotFoundError):
        return APIError(400, f"media file not found: {exc.filename or exc}", param="messages",
                        code="invalid_media")
    if isinstance(exc, ChatRequestError):
        text = str(exc)
        named = re.search(r"\b(tools|tool_choice|response_format|chat_template_kwargs|reasoning_format|"
                          r"reasoning_effort|parallel_tool_calls|json_schema|grammar|add_generation_prompt|"
                          r"continue_final_message|messages)\b", text)
        return APIError(400, text, param=named.group(1) if named else "messages", code="invalid_value")
    if isinstance(exc, GrammarError):
        return APIError(400, str(exc), param=grammar_param or "grammar", code="invalid_grammar")
    if isinstance(exc, TemplateError):
        return APIError(400, f"the chat template failed on these messages: {exc}", param="messages",
                        code="template_error")
    if isinstance(exc, (ValueError, TypeError)):
        msg = str(exc)
        fit = re.search(r"prompt of (\d+) tokens does not fit the context of (\d+)", msg)
        if fit:
            return exceed_context(int(fit.group(1)), int(fit.group(2)), prompt_param)
        m = re.search(r"GenerationParams\.(\w+)", msg)
        if m and m.group(1) in _PARAM_FIELDS:
            return APIError(400, msg, param=_PARAM_FIELDS[m.group(1)], code="invalid_value")
        if msg.startswith("lora: "):
            return APIError(400, msg, param="lora", code="invalid_value")
        if "prompt" in msg or "token" in msg:
            return APIError(400, msg, param=prompt_param, code="invalid_prompt")
        return APIError(400, msg, code="invalid_value")
    if isinstance(exc, LlamaError):
        return APIError(500, f"{type(exc).__name__}: {exc}", code="engine_error")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


# -- Anthropic's shape (the /v1/messages routes) ------------------------------------------------------
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_error(err: APIError) -> dict[str, Any]:
    """Anthropic's error body of ``err`` (it has no ``param``: the message starts with
    the field). Never raises."""
    kind = ANTHROPIC_ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    named = err.param is None or err.message.startswith(err.param)
    message = err.message if named else f"{err.param}: {err.message}"
    return {"type": "error", "error": {"type": kind, "message": message}}
