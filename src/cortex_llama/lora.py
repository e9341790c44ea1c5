"""LoRA adapters: :class:`LoraAdapter`, an adapter file loaded for a :class:`Model`,
and the methods that apply adapters to a :class:`Context`."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import _lib
from ._base import Owned
from ._lib import ffi, lib
from .context_base import ContextBase
from .errors import LlamaError
from .model import Model, PathLike, _why

__all__ = ["LoraAdapter", "ContextLoras"]


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


class ContextLoras(ContextBase):
    """The LoRA methods of a :class:`~cortex_llama.context.Context` (a base class
    of it; see :class:`ContextBase`): which adapters apply, at what scales."""

    # the adapters applied now with their scales (set_loras replaces the mapping)
    _loras: Mapping[LoraAdapter, float] = MappingProxyType({})

    def set_loras(self, adapters: Mapping[LoraAdapter, float]) -> None:
        """Apply exactly these LoRA adapters with their scales ({} removes all)."""
        items = list(adapters.items())
        handles: list[Any] = []
        for adapter, _ in items:
            handles.append(adapter.handle)  # ClosedError when closed
            if adapter.model is not self.model:
                raise ValueError(f"LoRA adapter {adapter.path} belongs to another model")
        arr = ffi.new("struct llama_adapter_lora *[]", max(1, len(items)))
        scales = ffi.new("float[]", max(1, len(items)))
        for i, (_, scale) in enumerate(items):
            arr[i] = handles[i]
            scales[i] = float(scale)
        with self.lock:
            rc = lib.llama_set_adapters_lora(self.handle, arr, len(items), scales)
        if rc != 0:
            raise LlamaError(f"llama_set_adapters_lora failed (rc {rc})")
        self._loras = dict(items)

    def add_lora(self, adapter: LoraAdapter, scale: float = 1.0) -> None:
        self.set_loras({**self._loras, adapter: scale})

    def remove_lora(self, adapter: LoraAdapter) -> None:
        self.set_loras({a: s for a, s in self._loras.items() if a is not adapter})
