"""Slot files: one slot's KV cells and tokens saved to a file and restored into
any slot (llama-server's ``/slots/{id}?action=save|restore|erase``).

A slot file is llama.cpp's sequence state file (``llama_state_seq_save_file``)
whose token list carries llama-server's packed token payload: the marker
``LLAMA_TOKEN_NULL`` (-1), the format version (1), the token count, the tokens
and a media count (0). So files move between ``cortex-llama serve`` and
``llama-server`` both ways; a plain token list (what older llama-servers wrote)
restores too. Slots holding an image or audio chunk cannot be saved.

The functions here run in the engine thread, on an idle slot
(:meth:`~.engine.Engine.on_idle_slot`); the scheduler learns what the slot
holds now, so the next request with that prefix reuses it.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from ..context import Context
from ..errors import StateError
from .engine import Engine
from .scheduler import Scheduler

__all__ = ["Slots", "SlotFileResult", "pack_tokens", "unpack_tokens", "save_slot", "restore_slot",
           "erase_slot"]

_T = TypeVar("_T")

PACKED_MARKER = -1  # LLAMA_TOKEN_NULL
PACKED_VERSION = 1  # llama-server's SERVER_TOKENS_STATE_VERSION


@dataclass(frozen=True)
class SlotFileResult:
    """What a save or restore did: the slot, its tokens, the file's bytes, the time."""

    slot: int
    path: str
    n_tokens: int
    n_bytes: int
    ms: float


def pack_tokens(tokens: Sequence[int]) -> list[int]:
    """llama-server's packed payload for a text-only slot."""
    return [PACKED_MARKER, PACKED_VERSION, len(tokens), *tokens, 0]


def unpack_tokens(words: Sequence[int]) -> list[int]:
    """The tokens of a packed payload, or of a plain token list.

    Raises :class:`StateError` for another version, a truncated payload, media
    chunks or trailing data.
    """
    if not words or words[0] != PACKED_MARKER:
        return list(words)
    if len(words) < 3 or words[1] != PACKED_VERSION:
        version = words[1] if len(words) > 1 else "none"
        raise StateError(f"unsupported slot file token format (version {version}, expected {PACKED_VERSION})")
    n = words[2]
    if n < 0 or len(words) < 3 + n + 1:
        raise StateError(f"truncated slot file: {n} tokens announced, {max(0, len(words) - 4)} present")
    media = words[3 + n]
    if media != 0:
        raise StateError(f"the slot file holds {media} image/audio chunks: restoring media is not supported")
    if len(words) > 3 + n + 1:
        raise StateError(f"trailing data in the slot file's token list ({len(words) - 4 - n} words)")
    return list(words[3: 3 + n])


def save_slot(ctx: Context, sched: Scheduler, seq_id: int, path: str) -> SlotFileResult:
    """Write slot ``seq_id``'s cells and tokens to ``path``.

    Raises :class:`StateError` when the slot holds media or llama.cpp cannot
    write the file.
    """
    start = time.perf_counter()
    slot = sched.slot(seq_id)
    tokens = list(slot.cached)
    if slot.holds_media:
        raise StateError(f"slot {seq_id} holds an image or audio chunk: such a slot cannot be saved")
    n_bytes = ctx.save_state(path, pack_tokens(tokens), seq_id=seq_id)
    return SlotFileResult(seq_id, path, len(tokens), n_bytes, (time.perf_counter() - start) * 1000)


def restore_slot(ctx: Context, sched: Scheduler, seq_id: int, path: str,
                 lora_key: tuple[float, ...] = ()) -> SlotFileResult:
    """Load ``path`` into slot ``seq_id`` (its old cells are dropped first; on
    failure it is left empty). The cells count as computed with the LoRA
    scales ``lora_key`` (a slot file does not record them).

    Raises ``FileNotFoundError`` for a missing file and :class:`StateError` for
    a file llama.cpp rejects (another model, no room), a token payload that
    does not parse, more tokens than a slot holds or a token outside the vocabulary.
    """
    start = time.perf_counter()
    capacity = sched.capacity
    erase_slot(ctx, sched, seq_id)
    try:
        words = ctx.load_state(path, seq_id=seq_id, max_tokens=capacity + 4).tolist()
        tokens = unpack_tokens(words)
        if len(tokens) > capacity:
            raise StateError(f"{path}: {len(tokens)} tokens do not fit a slot of {capacity} cells")
        bad = next((t for t in tokens if not 0 <= t < ctx.n_vocab), None)
        if bad is not None:
            raise StateError(f"{path}: token {bad} is outside the vocabulary [0, {ctx.n_vocab})")
    except BaseException:
        erase_slot(ctx, sched, seq_id)
        raise
    sched.set_cached(seq_id, tokens, lora_key)
    return SlotFileResult(seq_id, path, len(tokens), os.path.getsize(path), (time.perf_counter() - start) * 1000)


def erase_slot(ctx: Context, sched: Scheduler, seq_id: int) -> int:
    """Drop slot ``seq_id``'s cells; returns how many tokens it held."""
    n = len(sched.slot(seq_id).cached)
    ctx.seq_rm(seq_id, -1, -1)
    sched.set_cached(seq_id, [])
    return n


class Slots:
    """An engine's slots (``LLM.slots``): what they hold, and slot file
    operations, each of which waits until the slot runs no request, then runs
    in the engine thread.

    Every method raises ``ValueError`` for a slot outside ``[0, n_seq_max)``,
    :class:`ClosedError` when the LLM is closed, ``TimeoutError`` when
    ``timeout`` seconds pass first, and what the operation itself raises.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _run(self, seq_id: int, fn: Callable[[], _T], timeout: float | None) -> _T:
        fut = self._engine.on_idle_slot(seq_id, fn)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise TimeoutError(f"slot {seq_id} stayed busy for {timeout} s") from None

    def save(self, seq_id: int, path: str | os.PathLike[str], timeout: float | None = None) -> SlotFileResult:
        """Save slot ``seq_id`` to ``path`` (see :func:`save_slot`)."""
        e = self._engine
        return self._run(seq_id, lambda: save_slot(e.ctx, e.scheduler, seq_id, os.fspath(path)), timeout)

    def restore(self, seq_id: int, path: str | os.PathLike[str], timeout: float | None = None) -> SlotFileResult:
        """Restore ``path`` into slot ``seq_id`` (see :func:`restore_slot`); its
        cells count as computed with the default LoRA scales."""
        e = self._engine
        loras = e.runner.loras
        key = loras.key(None) if loras is not None else ()
        return self._run(seq_id, lambda: restore_slot(e.ctx, e.scheduler, seq_id, os.fspath(path), key), timeout)

    def erase(self, seq_id: int, timeout: float | None = None) -> int:
        """Drop slot ``seq_id``'s cached tokens; returns how many it held."""
        e = self._engine
        return self._run(seq_id, lambda: erase_slot(e.ctx, e.scheduler, seq_id), timeout)

    def cached_tokens(self, seq_id: int) -> int:
        """How many tokens slot ``seq_id`` holds now (a snapshot)."""
        return len(self._engine.scheduler.slot(seq_id).cached)

    def is_busy(self, seq_id: int) -> bool:
        """Whether slot ``seq_id`` runs a request now (a snapshot)."""
        return self._engine.scheduler.slot(seq_id).job is not None
