"""Batches of tokens (or embeddings) for ``Context.decode``, backed by numpy arrays."""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from ._base import check_ids
from ._lib import ffi
from .errors import ClosedError

__all__ = ["Batch"]

IntArray = Union[int, Sequence[int], np.ndarray]


class Batch:
    """A ``llama_batch`` whose arrays are numpy arrays owned by this object.

    ``Batch(capacity, n_seq_max=1, n_vocab=None, embd=0)`` holds up to
    ``capacity`` tokens, each in up to ``n_seq_max`` sequences. With ``embd > 0``
    it carries embedding vectors of that width instead of token ids.

    Every ``add`` checks its input (overflow, negative positions, sequence ids
    beyond ``n_seq_max``, token ids outside ``[0, n_vocab)`` when ``n_vocab`` is
    known) and raises ``ValueError`` before C ever sees the batch. Writing
    through the raw views (:attr:`tokens`, :attr:`positions`, ...) marks the
    batch unchecked, and ``Context.decode`` then validates it as a whole.
    """

    def __init__(self, capacity: int, n_seq_max: int = 1, *, n_vocab: int | None = None,
                 embd: int = 0) -> None:
        if int(capacity) < 1:
            raise ValueError(f"batch capacity must be at least 1, got {capacity}")
        if int(n_seq_max) < 1:
            raise ValueError(f"n_seq_max must be at least 1, got {n_seq_max}")
        if int(embd) < 0:
            raise ValueError(f"embd must be >= 0, got {embd}")
        self.capacity = cap = int(capacity)
        self.n_seq_max = int(n_seq_max)
        self.n_vocab = n_vocab
        self.embd = int(embd)
        self._token = np.zeros(cap, dtype=np.int32)
        self._embd = np.zeros((cap, self.embd), dtype=np.float32) if self.embd else None
        self._pos = np.zeros(cap, dtype=np.int32)
        self._n_seq_id = np.ones(cap, dtype=np.int32)
        self._seq_ids = np.zeros((cap, self.n_seq_max), dtype=np.int32)
        self._logits = np.zeros(cap, dtype=np.int8)
        # seq_id is an array of pointers, one per token, into the rows of _seq_ids
        self._seq_ptrs = ffi.new("llama_seq_id *[]", cap + 1)
        ptr_view = np.frombuffer(ffi.buffer(self._seq_ptrs), dtype=np.uintp)
        base = int(ffi.cast("uintptr_t", ffi.from_buffer(self._seq_ids)))
        ptr_view[:cap] = base + np.arange(cap, dtype=np.uintp) * (self.n_seq_max * 4)
        self._struct = ffi.new("struct llama_batch *")
        s = self._struct
        s.n_tokens = 0
        if self._embd is not None:
            s.token = ffi.NULL
            s.embd = ffi.cast("float *", ffi.from_buffer(self._embd))
        else:
            s.token = ffi.cast("llama_token *", ffi.from_buffer(self._token))
            s.embd = ffi.NULL
        s.pos = ffi.cast("llama_pos *", ffi.from_buffer(self._pos))
        s.n_seq_id = ffi.cast("int32_t *", ffi.from_buffer(self._n_seq_id))
        s.seq_id = self._seq_ptrs
        s.logits = ffi.cast("int8_t *", ffi.from_buffer(self._logits))
        self._n = 0
        self._unchecked = False
        self._closed = False
        # largest token and sequence id added, so decode can check a context's
        # limits in O(1)
        self._max_tok = -1
        self._max_seq = -1
        self._n_out = 0  # entries with logits requested (kept by add/add_many/set_logits)

    # -- state ------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this batch is closed")

    def close(self) -> None:
        """Drop the arrays. Idempotent."""
        if not self._closed:
            self._closed = True
            self._n = 0

    def __enter__(self) -> Batch:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def n_tokens(self) -> int:
        """How many entries the batch holds now."""
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def n_outputs(self) -> int:
        """How many entries request logits/embeddings."""
        if self._unchecked:
            return int(np.count_nonzero(self._logits[: self._n]))
        return self._n_out

    def clear(self) -> None:
        """Empty the batch (capacity is kept)."""
        self._check()
        self._n = 0
        self._unchecked = False
        self._max_tok = self._max_seq = -1
        self._n_out = 0

    def _free(self, n: int) -> None:
        self._check()
        if self._n + n > self.capacity:
            raise ValueError(
                f"batch overflow: adding {n} to {self._n} entries exceeds the capacity {self.capacity}"
            )

    def _check_seq(self, seq_ids: Sequence[int]) -> None:
        if not 1 <= len(seq_ids) <= self.n_seq_max:
            raise ValueError(f"each entry needs 1..{self.n_seq_max} sequence ids, got {len(seq_ids)}")
        for s in seq_ids:
            if not 0 <= s < self.n_seq_max:
                raise ValueError(f"sequence id {s} is outside [0, {self.n_seq_max}) (n_seq_max)")

    # -- filling ----------------------------------------------------------------
    def add(self, token: int, pos: int, seq_ids: int | Sequence[int] = 0,
            logits: bool = False) -> int:
        """Append one token at position ``pos`` in ``seq_ids``; returns its index.

        Set ``logits=True`` for the entries whose logits you will read.
        Raises ``ValueError`` on overflow, a negative position, a bad sequence
        id or a token id outside the vocabulary.
        """
        if self._embd is not None:
            raise ValueError("this is an embedding batch: use add_embd()")
        self._free(1)
        token = int(token)
        if token < 0 or (self.n_vocab is not None and token >= self.n_vocab):
            raise ValueError(f"token id {token} is outside the vocabulary [0, {self.n_vocab})")
        return self._put(pos, seq_ids, logits, token=token)

    def add_embd(self, vector: Sequence[float] | np.ndarray, pos: int,
                 seq_ids: int | Sequence[int] = 0, logits: bool = False) -> int:
        """Append one embedding vector (length ``embd``); returns its index."""
        if self._embd is None:
            raise ValueError("this is a token batch: create it with embd=n_embd for embeddings")
        self._free(1)
        vec = np.asarray(vector, dtype=np.float32)
        if vec.shape != (self.embd,):
            raise ValueError(f"embedding must have shape ({self.embd},), got {vec.shape}")
        i = self._put(pos, seq_ids, logits)
        self._embd[i] = vec
        return i

    def _put(self, pos: int, seq_ids: int | Sequence[int], logits: bool,
             token: int | None = None) -> int:
        pos = int(pos)
        if pos < 0:
            raise ValueError(f"position {pos} is negative")
        i = self._n
        if isinstance(seq_ids, (int, np.integer)):  # the common case, kept cheap
            top = int(seq_ids)
            if not 0 <= top < self.n_seq_max:
                raise ValueError(f"sequence id {top} is outside [0, {self.n_seq_max}) (n_seq_max)")
            self._n_seq_id[i] = 1
            self._seq_ids[i, 0] = top
        else:
            ids = tuple(map(int, seq_ids))
            self._check_seq(ids)
            top = max(ids)
            self._n_seq_id[i] = len(ids)
            self._seq_ids[i, : len(ids)] = ids
        if token is not None:
            self._token[i] = token
            if token > self._max_tok:
                self._max_tok = token
        if top > self._max_seq:
            self._max_seq = top
        self._pos[i] = pos
        if logits:
            self._logits[i] = 1
            self._n_out += 1
        else:
            self._logits[i] = 0
        self._n = i + 1
        return i

    def add_many(self, tokens: Sequence[int] | np.ndarray, pos: IntArray,
                 seq_id: IntArray = 0, logits: bool | str | Sequence[bool] | np.ndarray = "last"
                 ) -> slice:
        """Append many tokens at once, vectorized; returns the slice they occupy.

        ``pos`` is an array of positions or the int position of the first token
        (the rest follow consecutively). ``seq_id`` is one id for all tokens or
        one per token. ``logits`` is a bool for all, ``"last"`` (only the last
        token outputs, the default) or one flag per token.
        """
        if self._embd is not None:
            raise ValueError("this is an embedding batch: use add_embd()")
        toks = np.asarray(tokens, dtype=np.int64).ravel()
        n = toks.size
        self._free(n)
        if n == 0:
            return slice(self._n, self._n)
        check_ids(toks, self.n_vocab, f"token id {{}} is outside the vocabulary [0, {self.n_vocab})")
        if np.ndim(pos) == 0:
            positions = np.arange(int(pos), int(pos) + n, dtype=np.int64)  # type: ignore[arg-type]
        else:
            positions = np.asarray(pos, dtype=np.int64).ravel()
            if positions.size != n:
                raise ValueError(f"got {positions.size} positions for {n} tokens")
        check_ids(positions, None, "position {} is negative")
        seqs = np.broadcast_to(np.asarray(seq_id, dtype=np.int64), (n,)) if np.ndim(seq_id) == 0 \
            else np.asarray(seq_id, dtype=np.int64).ravel()
        if seqs.size != n:
            raise ValueError(f"got {seqs.size} sequence ids for {n} tokens")
        check_ids(seqs, self.n_seq_max, f"sequence id {{}} is outside [0, {self.n_seq_max}) (n_seq_max)")
        a, b = self._n, self._n + n
        self._max_tok = max(self._max_tok, int(toks.max()))
        self._max_seq = max(self._max_seq, int(seqs.max()))
        self._token[a:b] = toks
        self._pos[a:b] = positions
        self._n_seq_id[a:b] = 1
        self._seq_ids[a:b, 0] = seqs
        if isinstance(logits, str):
            if logits != "last":
                raise ValueError(f"logits must be a bool, 'last' or an array, not {logits!r}")
            self._logits[a:b] = 0
            self._logits[b - 1] = 1
            self._n_out += 1
        elif np.ndim(logits) == 0:
            self._logits[a:b] = 1 if logits else 0
            self._n_out += n if logits else 0
        else:
            flags = np.asarray(logits, dtype=bool).ravel()
            if flags.size != n:
                raise ValueError(f"got {flags.size} logits flags for {n} tokens")
            self._logits[a:b] = flags
            self._n_out += int(np.count_nonzero(flags))
        self._n = b
        return slice(a, b)

    def set_logits(self, index: int, value: bool = True) -> None:
        """Request (or not) the output of entry ``index``."""
        self._check()
        if not -self._n <= index < self._n:
            raise IndexError(f"batch index {index} out of range for {self._n} entries")
        self._n_out += (1 if value else 0) - int(self._logits[index] != 0)
        self._logits[index] = 1 if value else 0

    # -- raw views: writing through them marks the batch for a full check ----------
    def _view(self, arr: np.ndarray) -> np.ndarray:
        self._check()
        self._unchecked = True
        return arr

    @property
    def tokens(self) -> np.ndarray:
        """The whole token-id array (capacity entries), writable."""
        return self._view(self._token)

    @property
    def positions(self) -> np.ndarray:
        return self._view(self._pos)

    @property
    def seq_ids(self) -> np.ndarray:
        """``(capacity, n_seq_max)`` sequence ids; ``n_seq_ids`` says how many count."""
        return self._view(self._seq_ids)

    @property
    def n_seq_ids(self) -> np.ndarray:
        return self._view(self._n_seq_id)

    @property
    def logits(self) -> np.ndarray:
        """Per-entry output flags (int8)."""
        return self._view(self._logits)

    @property
    def embeddings(self) -> np.ndarray:
        if self._embd is None:
            raise ValueError("this is a token batch: it has no embeddings")
        return self._view(self._embd)

    def set_n_tokens(self, n: int) -> None:
        """Set the entry count after filling the raw views yourself."""
        self._check()
        if not 0 <= n <= self.capacity:
            raise ValueError(f"n_tokens {n} is outside [0, {self.capacity}]")
        self._n = int(n)
        self._unchecked = True

    def validate(self, n_vocab: int | None, n_seq_max: int) -> None:
        """Check every entry (used by ``Context.decode`` after raw-view writes)."""
        n = self._n
        if n == 0:
            return
        if self._embd is None:
            check_ids(self._token[:n], n_vocab, f"token id {{}} is outside the vocabulary [0, {n_vocab})")
        check_ids(self._pos[:n], None, "position {} is negative")
        counts = self._n_seq_id[:n]
        if counts.min() < 1 or counts.max() > self.n_seq_max:
            raise ValueError(f"each entry needs 1..{self.n_seq_max} sequence ids")
        mask = np.arange(self.n_seq_max)[None, :] < counts[:, None]
        used = self._seq_ids[:n][mask]
        check_ids(used, n_seq_max, f"sequence id {{}} is outside [0, {n_seq_max}) (the context's n_seq_max)")
        self._max_tok = int(self._token[:n].max()) if self._embd is None else -1
        self._max_seq = int(used.max())
        self._n_out = int(np.count_nonzero(self._logits[:n]))
        self._unchecked = False

    @property
    def needs_validation(self) -> bool:
        """True after writes through the raw views: :meth:`validate` must run
        before C reads the batch."""
        return self._unchecked

    @property
    def max_token(self) -> int:
        """The largest token id added (-1: none), for O(1) checks against a vocabulary."""
        return self._max_tok

    @property
    def max_seq_id(self) -> int:
        """The largest sequence id added (-1: none)."""
        return self._max_seq

    def set_single(self, token: int, pos: int, seq_id: int) -> None:
        """Make this a one-entry batch (token at ``pos`` of ``seq_id``, output
        requested) without checks: the caller has checked the values (the fast
        path of ``Context.decode_one``)."""
        self._token[0] = token
        self._pos[0] = pos
        self._n_seq_id[0] = 1
        self._seq_ids[0, 0] = seq_id
        self._logits[0] = 1
        self._n = 1
        self._n_out = 1
        self._unchecked = False
        self._max_tok = token
        self._max_seq = seq_id

    def as_c(self) -> Any:
        """The ``struct llama_batch`` for C, valid while this object lives."""
        self._check()
        self._struct.n_tokens = self._n
        return self._struct[0]
