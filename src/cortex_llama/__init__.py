"""cortex-llama: llama.cpp compiled from a pinned vendored tree, driven through cffi."""

from __future__ import annotations

__version__ = "0.1.0"

from . import _lib
from .errors import LlamaError

__all__ = ["LlamaError", "__version__"]
