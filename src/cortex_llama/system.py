"""What this build of llama.cpp can do: version, backends, devices, capabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from . import _lib
from ._version import __version__
from ._cdef import LLAMA_CPP_COMMIT
from ._lib import ffi, lib

__all__ = ["Device", "devices", "device_info", "devices_named", "backends", "system_info",
           "cpu_acceleration", "build_options", "applied_patches"]

_DEVICE_TYPES = {
    lib.GGML_BACKEND_DEVICE_TYPE_CPU: "cpu",
    lib.GGML_BACKEND_DEVICE_TYPE_GPU: "gpu",
    lib.GGML_BACKEND_DEVICE_TYPE_IGPU: "igpu",
    lib.GGML_BACKEND_DEVICE_TYPE_ACCEL: "accel",
}


@dataclass(frozen=True)
class Device:
    """A ggml backend device (a CPU, a GPU, an RPC server, ...)."""

    index: int
    name: str
    description: str
    type: str
    backend: str
    memory_free: int
    memory_total: int
    #: the ``ggml_backend_dev_t`` (static for the life of the process)
    handle: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The device's fields without its handle (JSON-ready)."""
        return {k: v for k, v in self.__dict__.items() if k != "handle"}


def _s(raw: Any) -> str:
    return "" if raw == ffi.NULL else ffi.string(raw).decode("utf-8", errors="replace")


def device_info(dev: Any, index: int = -1) -> Device:
    """A :class:`Device` describing the ``ggml_backend_dev_t`` ``dev``."""
    free, total = ffi.new("size_t *"), ffi.new("size_t *")
    lib.ggml_backend_dev_memory(dev, free, total)
    return Device(
        index=index,
        name=_s(lib.ggml_backend_dev_name(dev)),
        description=_s(lib.ggml_backend_dev_description(dev)),
        type=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
        backend=_s(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))),
        memory_free=int(free[0]),
        memory_total=int(total[0]),
        handle=dev,
    )


def devices() -> list[Device]:
    """Every device of every registered backend on this machine (RPC servers are
    not registered: see :mod:`cortex_llama.rpc`)."""
    _lib.init()
    return [device_info(lib.ggml_backend_dev_get(i), i) for i in range(lib.ggml_backend_dev_count())]


def devices_named(names: Sequence[str], among: Sequence[Device]) -> list[Device]:
    """The devices of ``among`` called ``names``, in that order; ``ValueError``
    naming the first unknown name and the known ones."""
    known = {d.name: d for d in among}
    for name in names:
        if name not in known:
            raise ValueError(f"no device named {name!r}; known devices: "
                             f"{', '.join(known) or 'none'}")
    return [known[n] for n in names]


def backends() -> list[str]:
    """Names of the registered ggml backends (CPU, CUDA, Vulkan, RPC, ...)."""
    _lib.init()
    return [_s(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
            for i in range(lib.ggml_backend_reg_count())]


def build_options() -> list[str]:
    """The build's options as written beside the loaded libraries: the ``GGML_*``
    options that were ON, ``CORTEX_LLAMA_AMX`` when AMX was asked for, and one
    ``patch:NAME`` per patch applied to the vendored llama.cpp."""
    options_file = _lib.lib_dir / "build_options.txt"
    return options_file.read_text().split() if options_file.is_file() else []


def applied_patches(options: list[str] | None = None) -> list[str]:
    """Names of the patches (``patches/*.patch``) the loaded libraries were built with
    (read from ``options`` when given, else from :func:`build_options`)."""
    return [o[len("patch:"):] for o in (build_options() if options is None else options)
            if o.startswith("patch:")]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_acceleration() -> dict[str, Any]:
    """What the CPU backend can use for matrix products on this machine.

    ``amx_cpu``: the processor has AMX (``amx_int8`` in ``/proc/cpuinfo``; False
    where it cannot tell). ``amx_built``: the loaded CPU backend was compiled with
    its AMX kernels (only with ``-DCORTEX_LLAMA_AMX=ON``). ``amx_in_use``: both, so
    quantized weights go to the ``AMX`` buffer type when ``use_extra_bufts`` is on.
    ``extra_buffer_types``: the CPU device's extra buffer types (``CPU_REPACK``:
    weights repacked into interleaved layouts at load; ``AMX``), used by models
    loaded with ``use_extra_bufts=True`` (the default). ``repack``: CPU_REPACK is
    among them. ``features``: the CPU backend's compiled-in features.
    """
    _lib.init()
    features: dict[str, str] = {}
    cpu_dev = lib.ggml_backend_dev_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU)
    get_features = _lib.cpu_proc("ggml_backend_get_features", "ggml_backend_get_features_t")
    if get_features is not None and cpu_dev != ffi.NULL:
        feat = get_features(lib.ggml_backend_dev_backend_reg(cpu_dev))
        i = 0
        while feat != ffi.NULL and feat[i].name != ffi.NULL:
            features[_s(feat[i].name)] = _s(feat[i].value)
            i += 1
    bufts: list[str] = []
    get_extra = _lib.cpu_proc("ggml_backend_dev_get_extra_bufts", "ggml_backend_dev_get_extra_bufts_t")
    if get_extra is not None and cpu_dev != ffi.NULL:
        arr = get_extra(cpu_dev)
        i = 0
        while arr != ffi.NULL and arr[i] != ffi.NULL:
            bufts.append(_s(lib.ggml_backend_buft_name(arr[i])))
            i += 1
    amx_cpu = "amx_int8" in _cpu_flags()
    amx_built = "AMX_INT8" in features
    return {
        "amx_cpu": amx_cpu,
        "amx_built": amx_built,
        "amx_in_use": amx_cpu and amx_built and "AMX" in bufts,
        "extra_buffer_types": bufts,
        "repack": "CPU_REPACK" in bufts,
        "features": features,
    }


def system_info() -> dict[str, Any]:
    """Everything ``cortex-llama info`` prints, as a dict."""
    _lib.init()
    # written by the build beside the libraries, so it describes the libraries that
    # were loaded (also those of $CORTEX_LLAMA_LIB_DIR)
    options = build_options()
    return {
        "cortex_llama": __version__,
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "library_commit": _lib.library_commit(),
        "library_dir": str(_lib.lib_dir),
        "build_options": [o for o in options if not o.startswith("patch:")],
        "patches": applied_patches(options),
        "cpu_acceleration": cpu_acceleration(),
        "system_info": _s(lib.llama_print_system_info()).strip(),
        "backends": backends(),
        "devices": [d.as_dict() for d in devices()],
        "supports": {
            "gpu_offload": bool(lib.llama_supports_gpu_offload()),
            "mmap": bool(lib.llama_supports_mmap()),
            "mlock": bool(lib.llama_supports_mlock()),
            "rpc": bool(lib.llama_supports_rpc()),
            "multimodal": _lib.mtmd_lib is not None,  # libmtmd: images/audio in
        },
    }
