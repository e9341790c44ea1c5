"""The LoRA adapters an LLM serves with (``ModelConfig.lora``) and their default
scales; a request's own scales (``GenerationParams.lora``) become its LoRA key,
the tuple of every adapter's scale that the scheduler groups steps by.

llama.cpp applies adapters to a whole context, so each decode runs one set of
scales: requests with other scales wait for a step of their own (see
:mod:`.scheduler`), as llama-server batches only slots whose LoRA agrees.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

from ..context import LoraAdapter
from ..model import Model

__all__ = ["LoraSet", "LoraInfo", "LoraSpec"]

LoraSpec = Union[str, "os.PathLike[str]", tuple[Union[str, "os.PathLike[str]"], float]]


@dataclass(frozen=True)
class LoraInfo:
    """One loaded adapter: its ``id`` (position in ``ModelConfig.lora``), file and default scale."""

    id: int
    path: str
    scale: float


class LoraSet:
    """Adapters loaded for ``model`` from ``specs`` (paths, or (path, scale)
    pairs). Raises :class:`LlamaError` for a missing or mismatched file and
    ``ValueError`` for a bad spec."""

    def __init__(self, model: Model, specs: Sequence[LoraSpec]) -> None:
        self.adapters: list[LoraAdapter] = []
        scales: list[float] = []
        try:
            for i, spec in enumerate(specs):
                path, scale = (spec if isinstance(spec, tuple) else (spec, 1.0))
                if not isinstance(scale, (int, float)):
                    raise ValueError(f"ModelConfig.lora[{i}]: the scale must be a number, got {scale!r}")
                self.adapters.append(LoraAdapter(model, path))
                scales.append(float(scale))
        except BaseException:
            self.close()
            raise
        self._defaults = scales
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.adapters)

    def close(self) -> None:
        for a in self.adapters:
            a.close()
        self.adapters = []

    def info(self) -> list[LoraInfo]:
        """Every adapter with its default scale."""
        with self._lock:
            return [LoraInfo(i, os.fspath(a.path), s) for i, (a, s) in enumerate(zip(self.adapters, self._defaults))]

    def set_defaults(self, scales: Mapping[int, float]) -> None:
        """Change default scales by id (llama-server's ``POST /lora-adapters``);
        requests submitted later use them. Raises ``ValueError`` for an unknown id."""
        with self._lock:
            self._defaults = list(self._merged(scales))

    def key(self, scales: Mapping[int, float] | None) -> tuple[float, ...]:
        """A request's LoRA key: the defaults with ``scales`` (by id) replaced.
        Raises ``ValueError`` for an id outside the loaded adapters or a scale that
        is not a number."""
        with self._lock:
            return self._merged(scales)

    def _merged(self, scales: Mapping[int, float] | None) -> tuple[float, ...]:
        # under self._lock
        out = list(self._defaults)
        if scales and not out:
            raise ValueError("lora: no LoRA adapters are loaded (ModelConfig.lora)")
        for i, s in (scales or {}).items():
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(out):
                raise ValueError(f"lora: adapter id {i!r} is not in [0, {len(out)}) "
                                 f"({len(out)} adapters loaded with ModelConfig.lora)")
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise ValueError(f"lora: the scale of adapter {i} must be a number, got {s!r}")
            out[i] = float(s)
        return tuple(out)

    def applied(self, key: tuple[float, ...]) -> dict[LoraAdapter, float]:
        """The adapters (with scales) to apply for ``key``: those not at 0."""
        return {a: s for a, s in zip(self.adapters, key) if s != 0}
