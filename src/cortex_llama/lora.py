"""LoRA adapters: :class:`LoraAdapter`, an adapter file loaded for a :class:`Model`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _lib
from ._base import Owned
from ._lib import ffi, lib
from .errors import LlamaError
from .model import Model, PathLike, _why

__all__ = ["LoraAdapter"]


class LoraAdapter(Owned):
    """A LoRA adapter file loaded for a :class:`Model`; apply it with ``Context.add_lora``.

    Raises :class:`ModelLoadError`-style :class:`LlamaError` when the file is
    missing or does not match the model.
    """

    _kind = "LoRA adapter"

    def __init__(self, model: Model, path: PathLike) -> None:
        self.model = model
        self.path = Path(os.fspath(path))
        if not self.path.is_file():
            raise LlamaError(f"LoRA adapter file not found: {self.path}")
        _lib.take_log_problems()
        ptr = lib.llama_adapter_lora_init(model.handle, str(self.path).encode())
        if ptr == ffi.NULL:
            raise LlamaError(_why(f"could not load LoRA adapter {self.path}"))
        self._own(ptr, lib.llama_adapter_lora_free)
        model._adopt(self)

    @property
    def handle(self) -> Any:
        """The raw ``llama_adapter_lora *``; raises :class:`ClosedError` when closed."""
        return self._check()
