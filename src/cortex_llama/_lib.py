"""The raw layer: ``ffi`` and ``lib``, llama.cpp's C API as declared in llama.h.

This is the only module that calls ``dlopen``. It looks for the libraries in
``$CORTEX_LLAMA_LIB_DIR`` when that is set, else in the package's own ``lib/``
folder; it checks that the library was built from the commit the declarations
were generated from, initializes the backend once, and routes llama.cpp's log
output to the :mod:`logging` logger ``cortex_llama`` (silent unless configured).

libmtmd (images and audio in, ``tools/mtmd``) is opened beside libllama when the
build made it: ``mtmd_lib`` is then its handle, else None and ``mtmd_missing``
says which paths were tried and why. libcortex-chat (our C shim over llama.cpp's
``common/chat.h``, ``csrc/cortex_chat.h``) is opened the same way as ``chat_lib``,
and libcortex-spec (over ``common/speculative.h``, ``csrc/cortex_spec.h``) as
``spec_lib``.

Names here are llama.cpp's own C names; the layers above give them Python ones.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import cffi

from ._cdef import CDEF, CHAT_CDEF, LLAMA_CPP_COMMIT, MTMD_CDEF, SPEC_CDEF

__all__ = ["ffi", "lib", "lib_dir", "LIB_DIR_ENV", "library_commit", "flag_abort_callback",
           "take_log_problems", "init", "mtmd_lib", "mtmd_missing", "chat_lib", "chat_missing",
           "spec_lib", "spec_missing"]

LIB_DIR_ENV = "CORTEX_LLAMA_LIB_DIR"
PACKAGE_LIB_DIR = Path(__file__).resolve().parent / "lib"

logger = logging.getLogger("cortex_llama")
logger.addHandler(logging.NullHandler())

ffi = cffi.FFI()
ffi.cdef(CDEF)
# From the C library: strlen serves as an abort callback that costs no Python
# (see flag_abort_callback below).
ffi.cdef("size_t strlen(const char *);")
# libmtmd's declarations: only callable through mtmd_lib (None when not built).
ffi.cdef(MTMD_CDEF)
# libcortex-chat's declarations: only callable through chat_lib (None when not built).
ffi.cdef(CHAT_CDEF)
# libcortex-spec's declarations: only callable through spec_lib (None when not built).
ffi.cdef(SPEC_CDEF)


def _library_names(stem: str = "llama") -> list[str]:
    if sys.platform == "win32":
        return [f"{stem}.dll", f"lib{stem}.dll"]
    if sys.platform == "darwin":
        return [f"lib{stem}.dylib"]
    return [f"lib{stem}.so"]


def _load() -> tuple[Any, Path]:
    override = os.environ.get(LIB_DIR_ENV)
    if override:
        dirs = [(Path(override), f"${LIB_DIR_ENV}")]
    else:
        dirs = [(PACKAGE_LIB_DIR, "the package's lib/ folder")]
    tried: list[str] = []
    for directory, source in dirs:
        for name in _library_names():
            path = directory / name
            if not path.is_file():
                tried.append(f"  {path} ({source}): no such file")
                continue
            try:
                if sys.platform == "win32":
                    os.add_dll_directory(str(directory))
                return ffi.dlopen(str(path)), directory
            except OSError as exc:
                tried.append(f"  {path} ({source}): {exc}")
    hint = (
        "reinstall cortex-llama so that its native libraries are built "
        "(pip install .), or point $CORTEX_LLAMA_LIB_DIR at a folder holding libllama"
    )
    raise ImportError(
        "cortex-llama could not load llama.cpp. Paths tried:\n" + "\n".join(tried) + f"\nFix: {hint}"
    )


lib, lib_dir = _load()


def _load_beside(stem: str, what: str, option: str) -> tuple[Any, str | None]:
    """lib<stem> from the folder libllama came from: (handle, None), or (None, why not)."""
    tried: list[str] = []
    for name in _library_names(stem):
        path = lib_dir / name
        if not path.is_file():
            tried.append(f"  {path}: no such file")
            continue
        try:
            return ffi.dlopen(str(path)), None
        except OSError as exc:
            tried.append(f"  {path}: {exc}")
    return None, (
        f"this cortex-llama was built without lib{stem} ({what}). Paths tried:\n"
        + "\n".join(tried)
        + f"\nFix: rebuild with lib{stem} (it is on by default; -D{option}=OFF leaves it out)"
    )


#: libmtmd's handle (mtmd.h, mtmd-helper.h), or None when the build left it out
mtmd_lib, mtmd_missing = _load_beside("mtmd", "multimodal input", "CORTEX_LLAMA_MTMD")
#: libcortex-chat's handle (csrc/cortex_chat.h), or None when the build left it out
chat_lib, chat_missing = _load_beside("cortex-chat", "llama.cpp's chat templates, tool calls and "
                                      "JSON schemas", "CORTEX_LLAMA_CHAT")
#: libcortex-spec's handle (csrc/cortex_spec.h), or None when the build left it out
spec_lib, spec_missing = _load_beside("cortex-spec", "llama.cpp's n-gram speculative drafts",
                                      "CORTEX_LLAMA_SPEC")


def _load_libc() -> Any:
    if sys.platform == "win32":
        return ffi.dlopen("ucrtbase.dll")
    return ffi.dlopen(None)


# ggml calls the abort callback after every graph node, on the decoding thread.
# A Python callback there would take the GIL hundreds of times per decode, so the
# default abort check is strlen() over a two-byte flag buffer {flag, 0}: it returns
# 1 (true: abort) once another thread sets the flag byte, else 0.
_libc = _load_libc()  # kept: the function pointer below lives as long as it
flag_abort_callback = ffi.cast("ggml_abort_callback", _libc.strlen)


def library_commit() -> str | None:
    """The llama.cpp commit the loaded library was built from, if it can tell.

    ggml records git's short hash when built from a git checkout; cortex-llama's
    own build writes ``llama_cpp_commit.txt`` beside the libraries.
    """
    commit = ffi.string(lib.ggml_commit()).decode(errors="replace")
    if commit and commit != "unknown":
        return commit.removesuffix("-dirty")
    stamp = lib_dir / "llama_cpp_commit.txt"
    if stamp.is_file():
        return stamp.read_text().strip()
    return None


def _check_commit() -> None:
    built = library_commit()
    if built is None:
        logger.warning("cannot tell which llama.cpp commit %s was built from", lib_dir)
        return
    if not LLAMA_CPP_COMMIT.startswith(built) or len(built) < 7:
        raise ImportError(
            f"llama.cpp in {lib_dir} was built from commit {built}, but cortex-llama's "
            f"declarations were generated for {LLAMA_CPP_COMMIT}. Rebuild the package "
            f"(pip install .) or unset ${LIB_DIR_ENV}."
        )


_check_commit()

# ---------------------------------------------------------------------------
# Logging: llama.cpp -> logging.getLogger("cortex_llama")
# ---------------------------------------------------------------------------
_LEVELS = {
    lib.GGML_LOG_LEVEL_NONE: logging.DEBUG,
    lib.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    lib.GGML_LOG_LEVEL_INFO: logging.INFO,
    lib.GGML_LOG_LEVEL_WARN: logging.WARNING,
    lib.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
class _LogState:
    """The level of the message being logged (continuations inherit it) and the
    text of its unfinished last line."""

    level: int = logging.INFO
    buffer: str = ""


_log_state = _LogState()
_log_lock = threading.Lock()
# llama.cpp reports why a load or a parse failed only through its log, on the thread
# that made the call; the last warnings and errors are kept per thread so that the
# exception raised in that thread quotes them, and no other thread can take them.
_thread_logs = threading.local()


def _problems() -> collections.deque[str]:
    problems = getattr(_thread_logs, "problems", None)
    if problems is None:
        problems = _thread_logs.problems = collections.deque(maxlen=16)
    return problems


def take_log_problems() -> list[str]:
    """The warnings and errors llama.cpp logged on this thread since its last call
    (and forget them)."""
    problems = _problems()
    lines = list(problems)
    problems.clear()
    return lines


@ffi.callback("void(enum ggml_log_level, const char *, void *)")
def _log_callback(level: int, text: Any, _user: Any) -> None:
    # Runs on whichever thread llama.cpp logs from; it must never raise.
    try:
        with _log_lock:
            if level != lib.GGML_LOG_LEVEL_CONT:
                _log_state.level = _LEVELS.get(level, logging.INFO)
            py_level = _log_state.level
            problem = py_level >= logging.WARNING
            if not problem and not logger.isEnabledFor(py_level):
                _log_state.buffer = ""
                return
            buffered = _log_state.buffer + ffi.string(text).decode("utf-8", errors="replace")
            *lines, rest = buffered.split("\n")
            _log_state.buffer = rest
            if problem:
                _problems().extend(line.strip() for line in lines if line.strip())
        for line in lines:
            if line.strip():
                logger.log(py_level, "%s", line)
    except Exception:  # pragma: no cover - a logging failure must not unwind into C
        pass


# ---------------------------------------------------------------------------
# One-time initialization
# ---------------------------------------------------------------------------
_init_lock = threading.Lock()
_initialized = False


def init() -> None:
    """Initialize llama.cpp once per process (thread-safe; later calls do nothing)."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        lib.llama_log_set(_log_callback, ffi.NULL)
        if mtmd_lib is not None:
            mtmd_lib.mtmd_helper_log_set(_log_callback, ffi.NULL)  # mtmd's and clip's log too
        if lib.ggml_backend_reg_count() == 0:
            # Built with GGML_BACKEND_DL: backends are modules beside libllama.
            lib.ggml_backend_load_all_from_path(str(lib_dir).encode())
        lib.llama_backend_init()
        _initialized = True


init()


# ---------------------------------------------------------------------------
# CPU backend extras, looked up through the registry (works with GGML_BACKEND_DL)
# ---------------------------------------------------------------------------
_cpu_procs: dict[str, Any] = {}


def cpu_proc(name: str, ctype: str) -> Any:
    """A function the CPU backend exports by name (e.g. ``ggml_threadpool_new``), cast
    to ``ctype``; None when there is no CPU backend or it lacks the function."""
    key = name + ctype
    if key not in _cpu_procs:
        init()
        fn = ffi.NULL
        dev = lib.ggml_backend_dev_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU)
        if dev != ffi.NULL:
            fn = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_dev_backend_reg(dev), name.encode())
        _cpu_procs[key] = None if fn == ffi.NULL else ffi.cast(ctype, fn)
    return _cpu_procs[key]
