"""Chat templates: the model's Jinja template in a sandbox, llama.cpp's built-ins, ChatML.

Resolution order used by :class:`cortex_llama.LLM`:

1. a template the user names (a built-in name such as ``"llama3"`` or a Jinja string);
2. the model's GGUF template, rendered with Jinja2 in a sandbox;
3. if Jinja2 is missing or the template fails to render, llama.cpp's built-in
   implementation of the same template (``llama_chat_apply_template``);
4. ChatML, only when the model has no template at all.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ._lib import ffi, lib
from ._templates import CHATML as _CHATML
from .errors import TemplateError

__all__ = ["Message", "builtin_templates", "apply_builtin", "render_jinja", "check_messages",
           "render", "CHATML"]

Message = Mapping[str, Any]

CHATML = _CHATML


def check_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Validate chat messages; returns plain dicts.

    Raises ``ValueError`` naming the first bad message (not a mapping, missing
    or non-string ``role``/``content``) or for an empty list.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError("messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict, not {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{i}] has no {key!r}")
            if not isinstance(m[key], str):
                raise ValueError(f"messages[{i}][{key!r}] must be a string, not {type(m[key]).__name__}")
        out.append(dict(m))
    return out


def builtin_templates() -> list[str]:
    """Names of the chat templates llama.cpp implements natively."""
    n = lib.llama_chat_builtin_templates(ffi.NULL, 0)
    arr = ffi.new("const char *[]", max(n, 1))
    lib.llama_chat_builtin_templates(arr, n)
    return [ffi.string(arr[i]).decode() for i in range(n)]


def apply_builtin(template: str, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Format with llama.cpp's native implementation of ``template`` (a built-in
    name or a template string it recognizes). Raises :class:`TemplateError`."""
    msgs = check_messages(messages)
    keep = [(ffi.new("char[]", m["role"].encode()), ffi.new("char[]", m["content"].encode()))
            for m in msgs]
    chat = ffi.new("llama_chat_message[]", len(keep))
    for i, (role, content) in enumerate(keep):
        chat[i].role, chat[i].content = role, content
    tmpl = template.encode()
    size = 2 * sum(len(m["content"]) + len(m["role"]) for m in msgs) + 256
    for _ in range(2):
        buf = ffi.new("char[]", size)
        n = lib.llama_chat_apply_template(tmpl, chat, len(keep), add_generation_prompt, buf, size)
        if n < 0:
            raise TemplateError(f"llama.cpp does not know the chat template {template[:60]!r}; "
                                f"built-in names: {', '.join(builtin_templates())}")
        if n <= size:
            return ffi.buffer(buf, n)[:].decode("utf-8", errors="replace")
        size = n + 1
    raise TemplateError("chat template output kept growing")  # pragma: no cover


def render_jinja(template: str, messages: Sequence[Message], add_generation_prompt: bool = True,
                 bos_token: str = "", eos_token: str = "", tools: Sequence[Any] | None = None,
                 **extra: Any) -> str:
    """Render a Jinja chat template in Jinja2's sandbox.

    Raises ``ImportError`` without Jinja2 and :class:`TemplateError` when the
    template does not parse or raises while rendering.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(f"chat template raised: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        undefined=jinja2.ChainableUndefined)
    env.globals["raise_exception"] = raise_exception
    env.filters.setdefault("tojson", lambda v, indent=None: __import__("json").dumps(v, indent=indent))
    try:
        compiled = env.from_string(template)
        return compiled.render(messages=check_messages(messages),
                               add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, tools=tools, **extra)
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template failed: {exc}") from exc


def render(template: str, messages: Sequence[Message], add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", tools: Sequence[Any] | None = None) -> str:
    """Render ``template``: a built-in name natively, else Jinja, else llama.cpp's
    built-in detection of the same template string."""
    names = builtin_templates()
    if template in names:
        return apply_builtin(template, messages, add_generation_prompt)
    if "{" not in template:
        raise TemplateError(f"unknown chat template name {template!r}; built-in names: "
                            f"{', '.join(names)} (or give a Jinja template)")
    try:
        return render_jinja(template, messages, add_generation_prompt, bos_token, eos_token, tools)
    except (ImportError, TemplateError) as jinja_error:
        try:
            return apply_builtin(template, messages, add_generation_prompt)
        except TemplateError:
            if isinstance(jinja_error, TemplateError):
                raise jinja_error from None
            raise
