"""Running the app with uvicorn: what ``cortex-llama serve`` calls."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any, Mapping, Sequence

from ..llm import LLM
from ..rpc import is_loopback
from .app import DEFAULT_MAX_BODY, create_app
from .gcp import GcpParams

__all__ = ["serve", "exposure_warning", "bind_all"]


class _Terminated(Exception):
    """SIGTERM arrived (uvicorn re-raises it after its graceful shutdown)."""


def _on_sigterm(sig: int, frame: FrameType | None) -> None:
    raise _Terminated()


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning to print when ``host`` is reachable beyond this machine and no
    API key protects it (None when there is nothing to warn about)."""
    if is_loopback(host) or api_key:
        return None
    return (f"cortex-llama: WARNING: serving on {host}, not loopback, without an API key: anyone who "
            "reaches this port can use the model. Pass --api-key (or set CORTEX_LLAMA_API_KEY).")


def bind_all(hosts: Sequence[str], port: int) -> list[socket.socket]:
    """A listening-ready TCP socket on ``port`` of each of ``hosts`` (names or
    addresses, IPv6 ones without brackets), as llama-server binds several
    ``--host`` values. Raises ``OSError`` when one cannot be bound (the others closed)."""
    out: list[socket.socket] = []
    try:
        for host in hosts:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.set_inheritable(True)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def serve(llm: LLM, *, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          model_alias: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
          log_level: str = "info", shutdown_timeout: int = 30, reasoning_format: str = "auto",
          media_path: str | None = None, allowed_hosts: Sequence[str] = (),
          cors_origins: Sequence[str] = (), settings: Mapping[str, Any] | None = None) -> None:
    """Serve ``llm`` on ``host:port`` until SIGINT/SIGTERM (``host`` may name several
    addresses, comma-separated, as llama-server's ``--host``: each is bound).

    Shutdown is graceful: the server stops accepting connections and lets the
    running requests finish for up to ``shutdown_timeout`` seconds, then
    cancels the rest; then this function returns (so the caller can close
    ``llm`` and exit with status 0). Warns on stderr when binding beyond loopback without an
    API key. ``media_path``, ``allowed_hosts``, ``cors_origins`` and
    ``settings`` are :func:`create_app`'s. With ``AIP_MODE=PREDICTION`` in the
    environment (llama-server's Google Cloud Platform compatibility, :mod:`.gcp`)
    the port is ``AIP_HTTP_PORT`` and the predict route is served. The caller
    closes ``llm`` afterwards. Raises ``ValueError`` when ``media_path`` is not a
    directory or an ``AIP_*`` variable is malformed, ``OSError`` when the address
    cannot be bound (uvicorn exits the process in that case).
    """
    import uvicorn

    hosts = [h.strip() for h in host.split(",") if h.strip()] or ["127.0.0.1"]
    for h in hosts:
        warning = exposure_warning(h, api_key)
        if warning:
            print(warning, file=sys.stderr)
    gcp = GcpParams.from_env(os.environ)
    if gcp.enabled and gcp.port != port:
        print(f"cortex-llama: Google Cloud Platform compat: port {gcp.port} (AIP_HTTP_PORT) in place of {port}",
              file=sys.stderr)
        port = gcp.port
    wildcard = [h for h in hosts if h in ("0.0.0.0", "::")]
    app = create_app(llm, api_key=api_key, model_alias=model_alias, max_body_bytes=max_body_bytes,
                     reasoning_format=reasoning_format, media_path=media_path, host=(wildcard or hosts)[0],
                     allowed_hosts=[*allowed_hosts, *hosts[1:]], cors_origins=cors_origins, settings=settings,
                     gcp=gcp)
    # h11 writes header names as the app gives them (httptools lowercases every one):
    # llama-server's Process-Start-Time-Unix and Access-Control-* reach clients that
    # compare names case-sensitively as they are spelled there
    config = uvicorn.Config(app, host=hosts[0], port=port, log_level=log_level, http="h11",
                            timeout_graceful_shutdown=shutdown_timeout, server_header=False)
    server = uvicorn.Server(config)
    sockets = bind_all(hosts, port) if len(hosts) > 1 else None
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        server.run(sockets=sockets)
    except _Terminated:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
