"""Distributed inference over llama.cpp's RPC backend.

One machine runs :func:`serve` (or ``cortex-llama rpc-server``), which exposes its
devices over TCP with ggml's own server; another loads a model across them with
``Model(path, n_gpu_layers=..., rpc_servers=["host:port", ...])``. Layers that are
not offloaded stay on the local CPU.

.. warning::
   The RPC protocol has no authentication and no encryption: anyone who can
   reach the port can run computations on the server and read or write its
   memory buffers. Bind to loopback (the default) or to a trusted private
   network only.

Servers are contacted from Python first (a TCP connect plus the protocol's HELLO
exchange, with a timeout), because ggml aborts the whole process when a server
is unreachable or speaks another protocol version; a bad endpoint therefore
raises :class:`RPCError` instead. A server that dies *while a model uses it*
still ends the client process: ggml has no way to report that error.

A server serves one client at a time; a second client waits until the first
disconnects (a client process keeps its connection until it exits).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from typing import Any, Sequence

from . import _lib
from ._cdef import RPC_PROTO_MAJOR_VERSION, RPC_PROTO_MINOR_VERSION
from ._lib import ffi, lib
from .errors import RPCError
from . import system
from .system import Device, device_info

__all__ = ["DEFAULT_PORT", "available", "parse_endpoint", "probe", "add_server",
           "server_devices", "serve"]

#: the port llama.cpp's rpc-server listens on by default
DEFAULT_PORT = 50052

_HELLO = 14          # RPC_CMD_HELLO, fixed by the protocol ("must be always 14")
_CONN_CAPS = 24      # bytes of transport capabilities in HELLO (zero: plain TCP)
_lock = threading.Lock()
_servers: dict[str, list[Any]] = {}  # endpoint -> its ggml_backend_dev_t handles


def _rpc_proc(name: str) -> Any:
    """``name`` from the RPC backend's registry, cast to its generated typedef."""
    _lib.init()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if reg == ffi.NULL:
        raise RPCError("this build of cortex-llama has no RPC backend; reinstall with "
                       'CMAKE_ARGS="-DGGML_RPC=ON" (the default unless turned off)')
    fn = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if fn == ffi.NULL:
        raise RPCError(f"the RPC backend does not export {name}")
    return ffi.cast(f"{name}_t", fn)


def available() -> bool:
    """True when this build has llama.cpp's RPC backend."""
    _lib.init()
    return lib.ggml_backend_reg_by_name(b"RPC") != ffi.NULL


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``"host:port"`` into its parts.

    Raises ``ValueError`` naming the endpoint when it is not ``host:port`` with a
    port in 1..65535 (ggml's parser takes everything before the first ``:`` as the
    host, so IPv6 literals cannot be used).
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"an RPC endpoint is a 'host:port' string, not {type(endpoint).__name__}")
    host, sep, port_text = endpoint.partition(":")
    if not sep or not host or ":" in port_text or not port_text.isdigit():
        raise ValueError(f"RPC endpoint {endpoint!r} is not 'host:port' "
                         "(IPv6 literals are not supported by ggml's RPC client)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"RPC endpoint {endpoint!r}: port {port} is outside 1..65535")
    return host, port


def probe(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """Connect to the RPC server at ``endpoint``, exchange HELLO, disconnect.

    Returns the server's protocol version ``(major, minor, patch)``. Raises
    :class:`RPCError` naming the endpoint when nothing listens there, the server
    does not answer within ``timeout`` seconds (it may be serving another
    client), the peer is not an RPC server, or its protocol version cannot talk
    to this build (major must equal ours, minor must not be newer).
    """
    host, port = parse_endpoint(endpoint)
    request = bytes([_HELLO]) + struct.pack("<Q", _CONN_CAPS) + bytes(_CONN_CAPS)
    reply_size = 4 + _CONN_CAPS
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            data = b""
            while len(data) < 8 + reply_size:
                chunk = sock.recv(8 + reply_size - len(data))
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        raise RPCError(f"RPC server {endpoint} did not answer within {timeout:g} s "
                       "(busy with another client, or not an RPC server)", endpoint) from None
    except OSError as exc:
        raise RPCError(f"cannot connect to RPC server {endpoint}: {exc.strerror or exc}",
                       endpoint) from None
    if len(data) < 8 + reply_size or struct.unpack("<Q", data[:8])[0] != reply_size:
        raise RPCError(f"{endpoint} did not answer the RPC HELLO (not a llama.cpp RPC server, "
                       "or one of an incompatible protocol version)", endpoint)
    major, minor, patch = data[8], data[9], data[10]
    if major != RPC_PROTO_MAJOR_VERSION or minor > RPC_PROTO_MINOR_VERSION:
        raise RPCError(
            f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}; this build speaks "
            f"{RPC_PROTO_MAJOR_VERSION}.{RPC_PROTO_MINOR_VERSION}.x: run the same llama.cpp "
            "version on both sides", endpoint)
    return major, minor, patch


def add_server(endpoint: str, timeout: float = 5.0) -> list[Device]:
    """Connect this process to the RPC server at ``endpoint`` and return its devices.

    The connection stays open for the life of the process, and a second call with
    the same endpoint returns the same devices without reconnecting. The devices
    are not added to :func:`cortex_llama.system.devices`; a model uses them only
    when asked (``Model(..., rpc_servers=[endpoint])`` or ``devices=[...]``).

    Raises :class:`RPCError` when the server cannot be used (see :func:`probe`)
    or the build has no RPC backend; ``ValueError`` for a malformed endpoint.
    """
    parse_endpoint(endpoint)
    with _lock:
        if endpoint not in _servers:
            add = _rpc_proc("ggml_backend_rpc_add_server")
            probe(endpoint, timeout)
            reg = add(endpoint.encode())
            if reg == ffi.NULL:
                raise RPCError(f"RPC server {endpoint} reports no devices", endpoint)
            _servers[endpoint] = [lib.ggml_backend_reg_dev_get(reg, i)
                                  for i in range(lib.ggml_backend_reg_dev_count(reg))]
        handles = _servers[endpoint]
    return [device_info(dev) for dev in handles]


def server_devices() -> list[Device]:
    """The devices of every RPC server this process has connected to."""
    with _lock:
        handles = [dev for devs in _servers.values() for dev in devs]
    return [device_info(dev) for dev in handles]


def _pick_local_devices(names: Sequence[str] | None) -> list[Any]:
    local = system.devices()
    if names:
        return [d.handle for d in system.devices_named(names, local)]
    # like llama.cpp's rpc-server: the accelerators, else the CPU
    accel = [d.handle for d in local if d.type not in ("cpu", "accel")]
    return accel or [d.handle for d in local if d.type == "cpu"][:1]


def _check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise RPCError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                       f"{host}:{port}") from None


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
          devices: Sequence[str] | None = None, threads: int | None = None,
          cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Serve this machine's devices to RPC clients with ggml's server. Never returns
    normally.

    ``devices`` are device names (``cortex-llama info`` lists them); by default the
    GPUs, else the CPU. ``threads`` is the CPU backend's thread count (default:
    half the cores). ``cache_dir`` lets clients send large tensors by hash once
    they are cached there.

    ggml's server loop cannot be stopped from Python, so it runs in a background
    thread while this call waits: Ctrl-C raises ``KeyboardInterrupt`` here, but the
    port stays open until the process exits. Run it in a process of its own.

    Raises :class:`RPCError` when the port cannot be bound or the server stops;
    ``ValueError`` for an unknown device or a bad port or thread count.
    """
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is outside 1..65535")
    n_threads = max(1, (os.cpu_count() or 2) // 2) if threads is None else int(threads)
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    start = _rpc_proc("ggml_backend_rpc_start_server")
    handles = _pick_local_devices(devices)
    if not handles:
        raise RPCError("no local device to serve", f"{host}:{port}")
    _check_port_free(host, int(port))
    endpoint = f"{host}:{int(port)}".encode()
    cache = None if cache_dir is None else os.fsencode(cache_dir)
    dev_array = ffi.new("ggml_backend_dev_t[]", handles)
    keep = (endpoint, cache, dev_array)  # alive for as long as the C server runs

    def run() -> None:
        start(keep[0], keep[1] if keep[1] is not None else ffi.NULL, n_threads,
              len(handles), keep[2])

    thread = threading.Thread(target=run, name=f"rpc-server {host}:{port}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
    raise RPCError(f"the RPC server on {host}:{port} stopped (see its messages above)",
                   f"{host}:{port}")
