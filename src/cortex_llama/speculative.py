"""llama.cpp's n-gram drafters for speculative decoding (``common/speculative.h``).

:class:`NgramDrafter` owns one ``common_speculative`` state (through our shim,
libcortex-spec) for ``n_seq`` sequences. Each call drafts for one sequence from
what it holds: prompt lookup over the request's own prompt and output, with the
lookup variants llama-server offers as ``--spec-type``. The caller verifies a
draft with the target model and reports how many of its tokens were accepted.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ._base import Owned
from ._lib import ffi, spec_lib, spec_missing
from .errors import LlamaError, SpeculationError

__all__ = ["NgramDrafter", "NGRAM_TYPES"]

#: llama.cpp's n-gram draft types (llama-server's ``--spec-type`` names)
NGRAM_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")


def _shim() -> Any:
    if spec_lib is None:
        raise LlamaError(spec_missing)
    return spec_lib


def _check(rc: int, err: Any, what: str) -> None:
    """Raise for a failed shim call: :class:`SpeculationError` for bad input,
    :class:`LlamaError` otherwise (the message is llama.cpp's)."""
    shim = _shim()
    text = ""
    if err[0] != ffi.NULL:
        text = ffi.string(err[0]).decode("utf-8", errors="replace")
        shim.cortex_spec_string_free(err[0])
    if rc == shim.CORTEX_SPEC_OK:
        return
    if rc == shim.CORTEX_SPEC_INVALID:
        raise SpeculationError(f"{what}: {text}")
    raise LlamaError(f"{what}: {text}")


class NgramDrafter(Owned):
    """Drafts by n-gram lookup for sequences ``0..n_seq-1``.

    ``types``: one or more of :data:`NGRAM_TYPES` (tried in llama.cpp's order,
    the first that drafts wins). ``size_n``/``size_m``/``min_hits`` set the
    lookup n-gram length, the drafted m-gram length and the key hits needed
    (``--spec-ngram-simple-size-n`` and the like); ``mod_*`` those of
    ``ngram-mod``; 0 keeps llama.cpp's default. Raises
    :class:`SpeculationError` for an unknown or non-n-gram type or a bad size,
    :class:`LlamaError` when the library was built without libcortex-spec.
    """

    _kind = "n-gram drafter"

    def __init__(self, types: str | Sequence[str], n_seq: int, *, size_n: int = 0, size_m: int = 0,
                 min_hits: int = 0, mod_n_match: int = 0, mod_n_min: int = 0, mod_n_max: int = 0) -> None:
        names = [types] if isinstance(types, str) else list(types)
        names = [n.strip() for name in names for n in name.split(",") if n.strip()]
        unknown = [n for n in names if n not in NGRAM_TYPES]
        if not names or unknown:
            raise SpeculationError(f"unknown n-gram speculative type {', '.join(unknown) or '(none)'!r}; "
                                   f"known: {', '.join(NGRAM_TYPES)}")
        for name, value, hi in (("size_n", size_n, 1024), ("size_m", size_m, 1024), ("min_hits", min_hits, 65535)):
            if not 0 <= value <= hi:
                raise SpeculationError(f"n-gram {name}={value} is outside [0, {hi}] (0: llama.cpp's default)")
        if n_seq < 1:
            raise SpeculationError(f"n_seq={n_seq}: a drafter serves at least one sequence")
        shim = _shim()
        params = ffi.new("struct cortex_spec_params *")
        self._types = ffi.new("char[]", ",".join(names).encode())  # kept: params points into it
        params.types = self._types
        params.ngram_size_n, params.ngram_size_m, params.ngram_min_hits = size_n, size_m, min_hits
        params.ngram_mod_n_match, params.ngram_mod_n_min, params.ngram_mod_n_max = mod_n_match, mod_n_min, mod_n_max
        out = ffi.new("struct cortex_spec **")
        err = ffi.new("char **")
        _check(shim.cortex_spec_init(params, n_seq, out, err), err, "speculative init")
        if out[0] == ffi.NULL:
            raise LlamaError("speculative init returned no state")
        free: Callable[[Any], None] = shim.cortex_spec_free
        self._own(out[0], free)
        self.types = tuple(names)
        self.n_seq = n_seq
        self._err = ffi.new("char **")
        self._n_out = ffi.new("int32_t *")
        self._out_cap = 0
        self._out: Any = None

    @property
    def n_max(self) -> int:
        """The longest draft the configured types make."""
        return int(_shim().cortex_spec_n_max(self._check()))

    def begin(self, seq_id: int, prompt: np.ndarray) -> None:
        """A new generation starts in ``seq_id`` over ``prompt`` (int32 array).
        Raises :class:`SpeculationError` for a sequence outside ``[0, n_seq)``."""
        ptr = self._check()
        buf = np.ascontiguousarray(prompt, dtype=np.int32)
        rc = _shim().cortex_spec_begin(ptr, seq_id, ffi.from_buffer("llama_token[]", buf), len(buf), self._err)
        _check(rc, self._err, "speculative begin")

    def draft(self, seq_id: int, history: np.ndarray, n_history: int, last: int, n_max: int) -> list[int]:
        """Up to ``n_max`` tokens likely to follow ``last`` (the newest token, at
        position ``n_history``) given ``history[:n_history]`` (int32 array: what
        the sequence holds). Empty when no n-gram matches. Raises
        :class:`SpeculationError` for a sequence outside ``[0, n_seq)``."""
        ptr = self._check()
        if n_max <= 0:
            return []
        if n_max > self._out_cap:
            self._out = ffi.new("llama_token[]", n_max)
            self._out_cap = n_max
        rc = _shim().cortex_spec_draft(ptr, seq_id, ffi.from_buffer("llama_token[]", history), n_history, last,
                                       n_history, n_max, self._out, self._out_cap, self._n_out, self._err)
        _check(rc, self._err, "speculative draft")
        return list(self._out[0:self._n_out[0]])

    def accept(self, seq_id: int, n_accepted: int) -> None:
        """The target accepted ``n_accepted`` tokens of ``seq_id``'s last draft."""
        rc = _shim().cortex_spec_accept(self._check(), seq_id, min(max(n_accepted, 0), 65535), self._err)
        _check(rc, self._err, "speculative accept")
