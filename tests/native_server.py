"""Native ``llama-server`` built from the vendored tree (bench/.build-server), for
parity tests: started on a free loopback port, stopped afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "bench" / ".build-server" / "bin" / "llama-server"
REQUIRE_ENV = "CORTEX_LLAMA_REQUIRE_NATIVE"
BUILD_HINT = "build it with: python3 scripts/build_llama_server.py"


def llama_server_binary() -> Path:
    """The binary, or a skip (a failure under CORTEX_LLAMA_REQUIRE_NATIVE=1, as in CI)."""
    if BINARY.is_file():
        return BINARY
    message = f"native llama-server is not built ({BINARY}); {BUILD_HINT}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NativeServer:
    """``llama-server -m MODEL ARGS`` on loopback; a context manager."""

    def __init__(self, model: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(llama_server_binary()), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
               "-t", "1", "-c", "512", "-np", "1", "--no-webui", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError("llama-server did not become healthy in 60 s")

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.post(path, json=body)

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> NativeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
