"""Saving and restoring a :class:`Context`'s state (its KV cache and outputs):
as bytes or to a file with the tokens it holds, whole or one sequence's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import _lib
from ._lib import ffi, lib
from .context_base import ContextBase
from .errors import StateError
from .model import PathLike, _why

__all__ = ["ContextState"]


class ContextState(ContextBase):
    """The state methods of a :class:`~cortex_llama.context.Context` (a base class
    of it; see :class:`ContextBase`)."""

    def state_bytes(self, seq_id: int | None = None) -> bytes:
        """The whole state (or one sequence's) as bytes."""
        with self.lock:
            ptr = self.handle
            if seq_id is None:
                size = lib.llama_state_get_size(ptr)
                buf = ffi.new("uint8_t[]", size)
                n = lib.llama_state_get_data(ptr, buf, size)
            else:
                sid = self.check_seq(seq_id)
                size = lib.llama_state_seq_get_size(ptr, sid)
                buf = ffi.new("uint8_t[]", size)
                n = lib.llama_state_seq_get_data(ptr, buf, size, sid)
            if n == 0 and size != 0:
                raise StateError(_why("llama.cpp could not serialize the state"))
            return ffi.buffer(buf, n)[:]

    def load_state_bytes(self, data: bytes, seq_id: int | None = None) -> None:
        """Restore state saved by :meth:`state_bytes` (into ``seq_id`` when given).

        Raises :class:`StateError` when llama.cpp rejects the data.
        """
        src = ffi.from_buffer("uint8_t[]", data)
        with self.lock:
            ptr = self.handle
            _lib.take_log_problems()
            if seq_id is None:
                n = lib.llama_state_set_data(ptr, src, len(data))
            else:
                n = lib.llama_state_seq_set_data(ptr, src, len(data), self.check_seq(seq_id))
            if n == 0:
                raise StateError(_why(f"llama.cpp rejected {len(data)} bytes of state"))

    def save_state(self, path: PathLike, tokens: Sequence[int] | np.ndarray = (),
                   seq_id: int | None = None) -> int:
        """Save the state (or one sequence's) and ``tokens`` to a file; returns
        the bytes written. Raises :class:`StateError` when llama.cpp cannot."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        raw = os.fsencode(os.fspath(path))
        with self.lock:
            ptr = self.handle
            _lib.take_log_problems()
            ids = ffi.from_buffer("llama_token[]", toks)
            if seq_id is None:
                ok = lib.llama_state_save_file(ptr, raw, ids, toks.size)
                written = os.path.getsize(raw) if ok else 0
            else:
                written = int(lib.llama_state_seq_save_file(ptr, raw, self.check_seq(seq_id), ids, toks.size))
                ok = written != 0
            if not ok:
                raise StateError(_why(f"could not save state to {os.fspath(path)}"))
        return written

    def load_state(self, path: PathLike, seq_id: int | None = None,
                   max_tokens: int | None = None) -> np.ndarray:
        """Load a state file saved by :meth:`save_state`; returns its tokens.

        Raises ``FileNotFoundError`` for a missing file and :class:`StateError`
        when llama.cpp rejects it.
        """
        p = Path(os.fspath(path))
        if not p.is_file():
            raise FileNotFoundError(f"state file not found: {p}")
        cap = int(max_tokens if max_tokens is not None else self.n_ctx)
        out = np.zeros(cap, dtype=np.int32)
        count = ffi.new("size_t *")
        with self.lock:
            ptr = self.handle
            _lib.take_log_problems()
            ids = ffi.from_buffer("llama_token[]", out)
            if seq_id is None:
                ok = lib.llama_state_load_file(ptr, os.fsencode(str(p)), ids, cap, count)
            else:
                ok = lib.llama_state_seq_load_file(ptr, os.fsencode(str(p)), self.check_seq(seq_id),
                                                   ids, cap, count) != 0
            if not ok:
                raise StateError(_why(f"could not load state from {p}"))
        return out[: count[0]].copy()
