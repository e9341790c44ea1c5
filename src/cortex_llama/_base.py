"""Shared plumbing of the object layer: owned native pointers and callback errors."""

from __future__ import annotations

import weakref
from typing import Any, Callable, TypeVar

from ._lib import ffi
from .errors import ClosedError

__all__ = ["Owned", "CallbackErrors", "check_ids"]

T = TypeVar("T", bound="Owned")


def check_ids(ids: Any, limit: int | None, message: str) -> None:
    """Raise ``ValueError(message.format(bad))`` for the first out-of-range value
    of the non-empty numpy array ``ids``: negative, or ``>= limit`` when given."""
    lo = int(ids.min())
    if lo < 0:
        raise ValueError(message.format(lo))
    if limit is not None:
        hi = int(ids.max())
        if hi >= limit:
            raise ValueError(message.format(hi))


class Owned:
    """An object that owns one native pointer.

    The pointer is wrapped with ``ffi.gc`` right after its NULL check, so it is
    freed when the object is collected; :meth:`close` frees it at once and is
    idempotent. Every public method calls :meth:`_check` first, so use after
    close raises :class:`ClosedError` rather than touching freed memory.
    Owners track their children weakly and close them first (a model closes
    its contexts), so a child never outlives the memory it points into.
    """

    _kind = "object"
    _ptr: Any = None

    def _own(self, ptr: Any, free: Callable[[Any], None], size: int = 0) -> Any:
        self._ptr = ffi.gc(ptr, free, size=size) if size else ffi.gc(ptr, free)
        self._children: weakref.WeakSet[Owned] = weakref.WeakSet()
        return self._ptr

    def _adopt(self, child: Owned) -> None:
        """Register ``child`` to be closed before this object frees its pointer."""
        self._children.add(child)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the owner closed this object)."""
        return self._ptr is None

    def _check(self) -> Any:
        ptr = self._ptr
        if ptr is None:
            raise ClosedError(f"this {self._kind} is closed")
        return ptr

    def close(self) -> None:
        """Free the native object now. Safe to call twice; later calls do nothing."""
        ptr = self._ptr
        if ptr is None:
            return
        self._ptr = None  # first: a child that closes its parent again finds it closed
        for child in list(getattr(self, "_children", ())):
            child.close()
        self._release(ptr)

    def _release(self, ptr: Any) -> None:
        ffi.release(ptr)

    def __enter__(self: T) -> T:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CallbackErrors:
    """Holds the first exception raised inside a Python callback called from C.

    C cannot unwind a Python exception, so callbacks store it here and tell C
    to stop; the caller re-raises it after the C call returns.
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def store(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def onerror(self, exc_type: type[BaseException], exc: BaseException, tb: Any) -> Any:
        """For ``ffi.callback(..., onerror=...)``: store, and return None (default)."""
        self.store(exc.with_traceback(tb))
        return None

    def reraise(self) -> None:
        exc, self.error = self.error, None
        if exc is not None:
            raise exc
