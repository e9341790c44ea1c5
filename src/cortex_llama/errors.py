"""The exception hierarchy of cortex-llama, rooted in :class:`LlamaError`.

C return codes map to classes through the tables at the bottom of this module,
and nowhere else: :func:`raise_for_decode` is the one place that reads them.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = [
    "LlamaError",
    "ModelLoadError",
    "ContextError",
    "ClosedError",
    "DecodeError",
    "KVCacheFullError",
    "AbortedError",
    "InvalidBatchError",
    "FatalDecodeError",
    "TokenizeError",
    "GrammarError",
    "StateError",
    "TemplateError",
    "ChatRequestError",
    "RPCError",
    "RegistryError",
    "MediaError",
    "QueueFullError",
    "SpeculationError",
    "raise_for_decode",
]


class LlamaError(Exception):
    """Base class of every error raised by cortex-llama."""


class ModelLoadError(LlamaError):
    """A model file could not be loaded: missing, not GGUF, truncated, unsupported.

    ``path`` is the file that was asked for.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ContextError(LlamaError):
    """A context (or another native object) could not be created."""


class ClosedError(LlamaError, ValueError):
    """A method was called on an object after ``close()`` (or after its owner closed)."""


class DecodeError(LlamaError):
    """``llama_decode`` / ``llama_encode`` returned an error code.

    ``code`` is the C return code.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class KVCacheFullError(DecodeError):
    """No KV-cache slot for the batch (rc 1). The context stays usable: free space
    (``seq_rm``, ``clear``) or decode a smaller batch."""


class AbortedError(DecodeError):
    """The decode was aborted through the abort callback (rc 2), e.g. by Ctrl-C."""


class InvalidBatchError(DecodeError, ValueError):
    """llama.cpp rejected the batch (rc -1)."""


class FatalDecodeError(DecodeError):
    """A fatal error inside llama.cpp (rc < -1); the context may be unusable."""


class TokenizeError(LlamaError, ValueError):
    """Tokenization or detokenization failed."""


class GrammarError(LlamaError, ValueError):
    """A GBNF grammar (or a JSON schema converted to one) is invalid."""


class StateError(LlamaError):
    """Saving or restoring context state failed."""


class TemplateError(LlamaError, ValueError):
    """A chat template is unknown or failed to render."""


class ChatRequestError(LlamaError, ValueError):
    """llama.cpp's chat layer rejected a conversation: a malformed message, tool,
    tool_choice, continuation or template argument. The message names the field."""


class RPCError(LlamaError):
    """An RPC server could not be reached, spoke another protocol version, or could
    not be started. ``endpoint`` is the ``host:port`` concerned."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class RegistryError(LlamaError):
    """A registry model or a Hugging Face file could not be had: unknown name, no
    network (the message says how to put the file in the cache by hand), a file
    that fails its sha256 check, or huggingface_hub not installed."""


class MediaError(LlamaError, ValueError):
    """An image or audio input cannot be used: not an image or audio file, audio for a
    vision-only projector (or an image for an audio-only one), a media part sent to
    a model without a projector, or media markers that do not match the media given."""


class SpeculationError(LlamaError, ValueError):
    """Speculative decoding cannot be set up as asked: an unknown draft type, a
    size out of range, or a draft model whose vocabulary differs from the
    target's (the message names both)."""


class QueueFullError(LlamaError):
    """``LLM.submit`` found ``ModelConfig.max_queue`` requests already waiting for a
    slot (an HTTP server answers 503: try again later)."""


# ---------------------------------------------------------------------------
# The one table of C return codes.
# ---------------------------------------------------------------------------
_DECODE_CODES: dict[int, tuple[type[DecodeError], str]] = {
    1: (KVCacheFullError, "no KV-cache slot for a batch of {n} tokens (context size {n_ctx})"),
    2: (AbortedError, "aborted by the abort callback"),
    -1: (InvalidBatchError, "invalid batch of {n} tokens"),
}


def raise_for_decode(rc: int, what: str, n_tokens: int, n_ctx: int,
                     details: list[str] | None = None) -> NoReturn:
    """Raise the exception class that the C return code ``rc`` of ``what``
    (``"llama_decode"`` or ``"llama_encode"``) maps to; ``details`` are the lines
    llama.cpp logged about it."""
    cls, template = _DECODE_CODES.get(rc, (FatalDecodeError, "fatal error"))
    if rc not in _DECODE_CODES and rc > 0:
        cls, template = DecodeError, "warning code"
    message = template.format(n=n_tokens, n_ctx=n_ctx)
    if details:
        message += " (llama.cpp: " + " | ".join(details[-3:]) + ")"
    raise cls(f"{what} returned {rc}: {message}", rc)
