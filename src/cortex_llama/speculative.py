"""llama.cpp's drafters for speculative decoding (``common/speculative.h``).

:class:`Drafter` owns one ``common_speculative`` state (through our shim,
libcortex-spec) for ``n_seq`` sequences. Each call drafts for one sequence from
what it holds: prompt lookup over the request's own prompt and output, with the
lookup variants llama-server offers as ``--spec-type``, and/or a draft model
that shares the target's vocabulary (llama.cpp's ``draft-simple``: the draft
model's context, one sequence per slot, decodes ahead greedily). The caller
verifies a draft with the target model and reports how many of its tokens were
accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

from ._base import Owned
from ._lib import ffi, spec_lib, spec_missing
from .errors import LlamaError, SpeculationError

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Drafter", "DraftRequest", "NGRAM_TYPES", "MODEL_TYPES"]

#: llama.cpp's n-gram draft types (llama-server's ``--spec-type`` names)
NGRAM_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")
#: llama.cpp's draft-model type this library drives (a separate model, same vocabulary)
MODEL_TYPES = ("draft-simple",)


class DraftRequest(NamedTuple):
    """One sequence's draft request: ``history[:n_history]`` (an int32 array) is
    what its cells hold, ``last`` its newest token (at position ``n_history``),
    ``n_max`` the most tokens to draft."""

    seq_id: int
    history: np.ndarray
    n_history: int
    last: int
    n_max: int


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


class Drafter(Owned):
    """Drafts for sequences ``0..n_seq-1``.

    ``types``: one or more of :data:`NGRAM_TYPES` and :data:`MODEL_TYPES`
    (tried in llama.cpp's order, n-gram types first; the first that drafts
    wins). ``size_n``/``size_m``/``min_hits`` set the lookup n-gram length, the
    drafted m-gram length and the key hits needed (``--spec-ngram-simple-size-n``
    and the like); ``mod_*`` those of ``ngram-mod``; 0 keeps llama.cpp's
    default. ``draft-simple`` needs ``draft`` (the draft model's context, with
    ``n_seq`` sequences) and ``target`` (the target's, whose vocabulary it must
    share); ``draft_max`` bounds its drafts, ``draft_p_min`` ends one at a
    token it drafts with less probability. The drafter holds both contexts
    and closes before either. A history with media gets no draft from the
    draft model. Raises :class:`SpeculationError` for an unknown type, a bad
    size, a missing context or a draft model whose vocabulary differs (naming
    both models and both vocabulary sizes), :class:`LlamaError` when the
    library was built without libcortex-spec.
    """

    _kind = "drafter"

    def __init__(self, types: str | Sequence[str], n_seq: int, *, size_n: int = 0, size_m: int = 0,
                 min_hits: int = 0, mod_n_match: int = 0, mod_n_min: int = 0, mod_n_max: int = 0,
                 draft: Context | None = None, target: Context | None = None, draft_max: int = 0,
                 draft_p_min: float = 0.0) -> None:
        names = [types] if isinstance(types, str) else list(types)
        names = [n.strip() for name in names for n in name.split(",") if n.strip()]
        unknown = [n for n in names if n not in NGRAM_TYPES + MODEL_TYPES]
        if not names or unknown:
            raise SpeculationError(f"unknown speculative type {', '.join(unknown) or '(none)'!r}; "
                                   f"known: {', '.join(NGRAM_TYPES + MODEL_TYPES)}")
        uses_model = any(n in MODEL_TYPES for n in names)
        if uses_model and (draft is None or target is None):
            raise SpeculationError("speculative type 'draft-simple' needs the draft model's context and the target's")
        if not 0.0 <= draft_p_min <= 1.0 or draft_max < 0:
            raise SpeculationError(f"draft_p_min={draft_p_min} (needs [0, 1]), draft_max={draft_max} (needs >= 0)")
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
        params.n_max = draft_max
        what = "speculative init"
        if uses_model:
            assert draft is not None and target is not None
            params.ctx_target, params.ctx_draft = target.handle, draft.handle
            params.draft_p_min = draft_p_min
            what = f"speculative init (target {target.model.path}, draft model {draft.model.path})"
        out = ffi.new("struct cortex_spec **")
        err = ffi.new("char **")
        _check(shim.cortex_spec_init(params, n_seq, out, err), err, what)
        if out[0] == ffi.NULL:
            raise LlamaError("speculative init returned no state")
        free: Callable[[Any], None] = shim.cortex_spec_free
        self._own(out[0], free)
        self.types = tuple(names)
        self.n_seq = n_seq
        #: the draft model's context (draft-simple), None for n-gram types only
        self.draft_context = draft if uses_model else None
        self.target_context = target if uses_model else None
        if uses_model:
            assert draft is not None and target is not None
            draft._adopt(self)  # the shim points at both: close first
            target._adopt(self)
        self._err = ffi.new("char **")

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
        the sequence holds): :meth:`draft_many` for one sequence."""
        return self.draft_many([DraftRequest(seq_id, history, n_history, last, n_max)])[0]

    def draft_many(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        """One draft per request (each sequence at most once), made together: a
        draft model decodes one batch a step for all of them. A draft is empty
        when no n-gram matches and the draft model, if any, could not draft.
        Raises :class:`SpeculationError` for a sequence outside ``[0, n_seq)``
        or drafted twice."""
        ptr = self._check()
        todo = [r for r in requests if r.n_max > 0]
        if not todo:
            return [[] for _ in requests]
        reqs = ffi.new("struct cortex_spec_request[]", len(todo))
        keep = []  # the buffers C reads and writes during the call
        for c, r in zip(reqs, todo):
            history = ffi.from_buffer("llama_token[]", r.history)
            out = ffi.new("llama_token[]", r.n_max)
            keep += [history, out]
            c.seq_id, c.history, c.n_history, c.id_last = r.seq_id, history, r.n_history, r.last
            c.n_max, c.out, c.out_cap = r.n_max, out, r.n_max
        _check(_shim().cortex_spec_draft_many(ptr, reqs, len(todo), self._err), self._err, "speculative draft")
        drafts = {id(r): list(c.out[0:c.n_out]) for c, r in zip(reqs, todo)}
        del keep
        return [drafts.get(id(r), []) for r in requests]

    def sync(self, seq_id: int, history: np.ndarray, n_history: int) -> None:
        """Bring the draft model's cells of ``seq_id`` to ``history[:n_history]``
        (:meth:`draft` does it first; this does the work apart, e.g. a prompt's).
        No-op without a draft model or for a history with media."""
        ptr = self._check()
        if self.draft_context is None:
            return
        rc = _shim().cortex_spec_sync(ptr, seq_id, ffi.from_buffer("llama_token[]", history), n_history, self._err)
        _check(rc, self._err, "speculative sync")

    def accept(self, seq_id: int, n_accepted: int) -> None:
        """The target accepted ``n_accepted`` tokens of ``seq_id``'s last draft."""
        rc = _shim().cortex_spec_accept(self._check(), seq_id, min(max(n_accepted, 0), 65535), self._err)
        _check(rc, self._err, "speculative accept")
