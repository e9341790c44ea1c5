"""Stopping a running decode: a context's abort flag and its Ctrl-C check."""

from __future__ import annotations

from typing import Any, Callable

from . import _lib
from ._base import CallbackErrors
from ._lib import ffi, lib

__all__ = ["DecodeAbort"]


class DecodeAbort:
    """The abort switch of one context's decodes.

    llama.cpp asks an abort callback between graph nodes whether to stop. By
    default that is :data:`_lib.flag_abort_callback` reading :attr:`flag`, which
    costs no Python; :meth:`request` sets the flag from any thread. A decode
    run by :meth:`run` with ``interruptible`` swaps in a Python callback, so
    that a pending Ctrl-C aborts it too; :meth:`reraise` raises what that
    callback caught.
    """

    def __init__(self) -> None:
        # The abort flag: {flag, 0}, read by strlen (see _lib.flag_abort_callback).
        self.flag = ffi.new("char[2]")
        self._errors = CallbackErrors()
        flag = self.flag

        def abort_check(_data: Any) -> bool:
            # Python code runs here, so a pending Ctrl-C is raised inside this
            # callback; onerror stores it and the callback returns True: abort.
            return flag[0] != b"\0"

        # (a closure, not a bound method: no reference cycle through the callback)
        self._py_abort = ffi.callback("ggml_abort_callback", abort_check, error=True,
                                      onerror=self._errors.onerror)

    def set_params(self, p: Any) -> None:
        """Make the ``llama_context_params`` ``p`` check :attr:`flag`."""
        p.abort_callback = _lib.flag_abort_callback
        p.abort_callback_data = self.flag

    def request(self) -> None:
        """Ask the running decode (or the next one) to stop. Safe from any thread."""
        self.flag[0] = b"\1"

    def run(self, fn: Callable[[Any, Any], int], ptr: Any, cbatch: Any, interruptible: bool) -> int:
        """``fn(ptr, cbatch)`` (``llama_decode`` or ``llama_encode``) for the
        ``llama_context *`` ``ptr``; returns its code. A pending request is consumed
        by it; with ``interruptible``, Ctrl-C aborts it too (call :meth:`reraise`
        after)."""
        if interruptible:
            lib.llama_set_abort_callback(ptr, self._py_abort, self.flag)
        try:
            return fn(ptr, cbatch)
        finally:
            self.flag[0] = b"\0"  # an abort request is consumed by one decode
            if interruptible:
                lib.llama_set_abort_callback(ptr, _lib.flag_abort_callback, self.flag)

    def reraise(self) -> None:
        """Raise the exception (e.g. ``KeyboardInterrupt``) the Ctrl-C check caught, if any."""
        self._errors.reraise()
