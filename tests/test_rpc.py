"""Distributed inference over llama.cpp's RPC backend, on loopback.

Two ``cortex-llama rpc-server`` processes plus the local CPU: the model's layers
are split over all three, and greedy output must equal the local-only output.
Bad endpoints raise RPCError/ValueError instead of letting ggml abort the process.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from cortex_llama import LLM, Context, Model, RPCError
from cortex_llama import rpc
from cortex_llama.system import devices

from .helpers import greedy_argmax

pytestmark = [pytest.mark.rpc,
              pytest.mark.skipif(not rpc.available(), reason="built with -DGGML_RPC=OFF")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cortex_llama", "rpc-server", "--port", str(port), "--threads", "1",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(proc: subprocess.Popen[str], endpoint: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc-server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            rpc.probe(endpoint, timeout=2.0)
            return
        except RPCError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[str]]:
    procs, endpoints = [], []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(start_server(port))
            endpoints.append(f"127.0.0.1:{port}")
        for proc, endpoint in zip(procs, endpoints):
            wait_ready(proc, endpoint)
        yield endpoints
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def local_greedy(path: Path, prompt: str, n: int) -> list[int]:
    with Model(path) as m, Context(m, n_ctx=256, n_threads=2) as ctx:
        return greedy_argmax(ctx, m.tokenize(prompt), n)


def test_two_servers_plus_local_cpu_equal_local_greedy(small_path: Path, servers: list[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    expected = local_greedy(small_path, "split over machines", 24)
    with caplog.at_level(logging.INFO, logger="cortex_llama"):
        # small has 4 layers: layer 0 stays on the local CPU, 1..3 go to the two servers
        with Model(small_path, n_gpu_layers=3, rpc_servers=servers) as m:
            assert m.devices is not None
            assert [d.description for d in m.devices] == servers
            assert all(d.backend == "RPC" and d.memory_total > 0 for d in m.devices)
            with Context(m, n_ctx=256, n_threads=2) as ctx:
                got = greedy_argmax(ctx, m.tokenize("split over machines"), 24)
    assert got == expected
    # llama.cpp reports a model buffer on each server ("RPC0[host:port]") and the local CPU
    buffers = [r.getMessage() for r in caplog.records if "model buffer size" in r.getMessage()]
    for endpoint in servers:
        assert any(f"[{endpoint}]" in line for line in buffers), (endpoint, buffers)
    assert any("CPU" in line for line in buffers), buffers


def test_all_layers_remote_and_high_level_api(small_path: Path, servers: list[str]) -> None:
    with LLM(small_path, threads=2, context_size=256) as local:
        want = local.complete("remote", max_tokens=16, temperature=0).tokens
    with LLM(small_path, threads=2, context_size=256, gpu_layers=-1, rpc_servers=servers) as remote:
        assert remote.complete("remote", max_tokens=16, temperature=0).tokens == want


def test_add_server_is_idempotent(servers: list[str]) -> None:
    first = rpc.add_server(servers[0])
    again = rpc.add_server(servers[0])
    assert [d.name for d in first] == [d.name for d in again]
    assert {d.name for d in first} <= {d.name for d in rpc.server_devices()}
    # remote devices never join the local registry (no model uses them unasked)
    assert not any(d.backend == "RPC" for d in devices())


def test_devices_by_name(small_path: Path, servers: list[str]) -> None:
    remote = rpc.add_server(servers[1])
    expected = local_greedy(small_path, "by name", 8)
    with Model(small_path, n_gpu_layers=-1, devices=[remote[0].name]) as m:
        assert [d.name for d in m.devices or []] == [remote[0].name]
        with Context(m, n_ctx=128, n_threads=2) as ctx:
            assert greedy_argmax(ctx, m.tokenize("by name"), 8) == expected


def test_unreachable_server_raises_not_aborts(tiny_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    with pytest.raises(RPCError, match=endpoint) as info:
        Model(tiny_path, n_gpu_layers=-1, rpc_servers=[endpoint])
    assert info.value.endpoint == endpoint


def test_peer_that_is_not_an_rpc_server(tiny_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=answer_garbage, daemon=True)
    t.start()
    try:
        with pytest.raises(RPCError, match="did not answer the RPC HELLO"):
            Model(tiny_path, n_gpu_layers=-1, rpc_servers=[endpoint])
    finally:
        t.join(5)
        listener.close()


def test_silent_peer_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(RPCError, match="did not answer within 0.3 s"):
            rpc.probe(endpoint, timeout=0.3)


@pytest.mark.parametrize("endpoint", ["localhost", "host:", ":50052", "h:0", "h:70000", "h:x", "::1:5"])
def test_malformed_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError, match="RPC endpoint"):
        rpc.parse_endpoint(endpoint)


def test_bad_device_arguments(tiny_path: Path, servers: list[str]) -> None:
    with pytest.raises(ValueError, match="n_gpu_layers=0"):
        Model(tiny_path, rpc_servers=servers)
    with pytest.raises(ValueError, match="CPU device"):
        Model(tiny_path, n_gpu_layers=-1, devices=["CPU"])
    with pytest.raises(ValueError, match="no device named 'nope'"):
        Model(tiny_path, n_gpu_layers=-1, devices=["nope"])
    with pytest.raises(TypeError):
        Model(tiny_path, n_gpu_layers=-1, rpc_servers=servers[0])  # a string, not a list
    name = rpc.add_server(servers[0])[0].name
    with pytest.raises(ValueError, match="listed twice"):
        Model(tiny_path, n_gpu_layers=-1, rpc_servers=[servers[0]], devices=[name])


def test_server_on_a_busy_port_fails_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "cortex_llama", "rpc-server", "--port", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_non_loopback_host_warns() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "cortex_llama", "rpc-server", "--host", "0.0.0.0",
                              "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert "no authentication" in out.stderr
    assert out.returncode == 1  # the port is taken, so it stops right after the warning


def test_unknown_server_device() -> None:
    out = subprocess.run([sys.executable, "-m", "cortex_llama", "rpc-server", "--port", str(free_port()),
                          "--device", "NoSuchGPU"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no device named 'NoSuchGPU'" in out.stderr
