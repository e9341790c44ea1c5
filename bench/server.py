#!/usr/bin/env python3
"""HTTP serving speed: ``cortex-llama serve`` against native ``llama-server``.

Both servers get the same model, slots (``--parallel``), context, threads and
batch size, and the same load from one asyncio httpx client: ``N`` streamed
``/v1/completions`` requests (fixed prompts, greedy, fixed ``max_tokens``, the
end-of-generation tokens banned through ``logit_bias`` so every request
generates exactly ``max_tokens``), sent by 1, 8 and 32 concurrent clients. The
servers run one at a time, alternating, ``--reps`` times; medians are reported.

    python bench/server.py                   # small model, 3 reps, 1 thread
    python bench/server.py --model tiny --reps 5 --requests 64 --max-tokens 64 --threads 4

A last row runs the same load on the engine in-process (``LLM.submit``, no HTTP),
which shows what the HTTP layer costs on top of the engine.

``llama-server`` is built from the vendored llama.cpp into ``bench/.build-server``
with bench/run.py's ``build_native``. ``llama_cpp.server`` (llama-cpp-python) runs
too when ``bench/.venv-lcp`` has it with its server extras, on the package's own
libllama. Writes ``bench/results/server.md`` and ``server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import LCP_PYTHON, RESULTS, build_native, machine, make_models  # noqa: E402

BUILD_SERVER = HERE / ".build-server"
ENGINE = "engine, no HTTP"
PROMPTS = [f"Request {i}: once upon a time, in a land far away, there lived a {w}"
           for i, w in enumerate(["king", "queen", "dragon", "farmer", "wizard", "knight", "cat", "fox"] * 16)]


def run_prompts(n: int, tag: str) -> list[str]:
    """The first ``n`` prompts, made new for the measurement ``tag``: neither server
    may answer them from a prompt cache filled by an earlier row (llama-server
    keeps finished prompts in host memory, --cache-ram; cortex-llama in idle slots),
    so every row measures prefill as well as generation."""
    return [f"(run {tag}) {p}" for p in PROMPTS[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A server subprocess, ready once ``/health`` answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None,
                 health: str = "/health", timeout: float = 120.0) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        BUILD_SERVER.mkdir(parents=True, exist_ok=True)
        self.log = open(BUILD_SERVER / f"{name}.log", "wb")  # (ignored by git)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env or dict(os.environ))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not become healthy; see {self.log.name}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start(kind: str, model: Path, args: argparse.Namespace, bindir: Path | None) -> Proc:
    port = free_port()
    # -c is the KV cells in all for both servers (llama-server's meaning); a slot
    # gets --ctx of them, or shares all of them with --kv-unified
    total = args.ctx if args.kv_unified else args.ctx * args.parallel
    common = ["-c", str(total), "-t", str(args.threads), "-b", str(args.batch),
              *(["-kvu"] if args.kv_unified else [])]
    if kind == "cortex-llama":
        cmd = [sys.executable, "-m", "cortex_llama", "serve", str(model), "--port", str(port), "--parallel",
               str(args.parallel), "-ub", str(args.batch), "--log-level", "warning", *common]
        return Proc(kind, cmd, port)
    if kind == "llama-server":
        assert bindir is not None
        cmd = [str(bindir / "llama-server"), "-m", str(model), "--port", str(port), "-np", str(args.parallel),
               "-ub", str(args.batch), "-tb", str(args.threads), "--no-webui", *common]
        return Proc(kind, cmd, port)
    import cortex_llama._lib

    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(cortex_llama._lib.lib_dir)}
    cmd = [str(LCP_PYTHON), "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
           "--n_ctx", str(args.ctx), "--n_threads", str(args.threads), "--n_batch", str(args.batch)]
    return Proc(kind, cmd, port, env=env, health="/v1/models")


async def one(client: httpx.AsyncClient, url: str, prompt: str, args: argparse.Namespace,
              ban: dict[str, float]) -> tuple[float, float, int]:
    """(time to first token, total time, generated tokens) of one streamed request."""
    body = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "logit_bias": ban, "stream_options": {"include_usage": True}}
    for attempt in range(3):
        try:
            return await _one(client, url, body)
        except httpx.RemoteProtocolError:  # a kept-alive connection the server had just closed
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]["completion_tokens"]
            for c in ev.get("choices") or []:
                if c.get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total, (usage if usage is not None else chunks)


async def load(url: str, clients: int, args: argparse.Namespace, ban: dict[str, float],
               tag: str) -> dict[str, float]:
    """``args.requests`` requests from ``clients`` concurrent clients."""
    prompts = run_prompts(args.requests, tag)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                p = queue.get_nowait()
                results.append(await one(client, url, p, args, ban))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    return {"req_s": len(results) / wall, "tok_s": tokens / wall, "tokens": tokens, "wall_s": wall,
            "ttft_p50_ms": 1000 * statistics.median(ttfts),
            "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]}


def engine_load(llm: Any, clients: int, args: argparse.Namespace, ban: dict[int, float],
                tag: str) -> dict[str, float]:
    """The same load on the engine in this process (``LLM.submit``, no HTTP):
    what the server adds on top of it."""
    from cortex_llama import GenerationParams

    params = GenerationParams(temperature=0, max_tokens=args.max_tokens, logit_bias=ban)
    prompts = list(reversed(run_prompts(args.requests, tag)))
    results: list[tuple[float, int]] = []

    async def worker() -> None:
        while prompts:
            t0 = time.perf_counter()
            ttft = None
            req = llm.submit(prompts.pop(), params)
            async for _ in req:
                if ttft is None:
                    ttft = time.perf_counter() - t0
            results.append((ttft or 0.0, len(req.tokens)))

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0

    wall = asyncio.run(run())
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"req_s": len(results) / wall, "tok_s": tokens / wall, "tokens": tokens, "wall_s": wall,
            "ttft_p50_ms": 1000 * statistics.median(ttfts),
            "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]}


def lcp_available() -> bool:
    if not LCP_PYTHON.exists():
        return False
    import cortex_llama._lib

    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(cortex_llama._lib.lib_dir)}
    return subprocess.run([str(LCP_PYTHON), "-c", "import llama_cpp.server.app"], env=env,
                          capture_output=True).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="tiny, small or 1b (bench/run.py's models), a GGUF "
                                                      "file or a registry name (smollm2-135m-instruct)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=32, help="slots of both servers")
    ap.add_argument("--ctx", type=int, default=4096, help="context of one request (KV cells per slot)")
    ap.add_argument("--kv-unified", action="store_true",
                    help="both servers share one KV cache of --ctx cells over the slots (-kvu)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of both servers (1: on a small shared machine, spinning thread pools "
                         "that lose their core dominate every number)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="build jobs for llama-server")
    ap.add_argument("--no-native", action="store_true", help="measure cortex-llama only")
    args = ap.parse_args()
    if args.requests > len(PROMPTS):
        ap.error(f"--requests must be <= {len(PROMPTS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.model in ("tiny", "small", "1b"):
        model = make_models([args.model])[args.model]
    else:  # a GGUF file or a registry name (smollm2-135m-instruct)
        from cortex_llama import registry

        model = Path(args.model) if Path(args.model).exists() else registry.pull(args.model)
    kinds = ["cortex-llama"]
    bindir = None
    if not args.no_native:
        bindir = build_native(args.jobs, BUILD_SERVER, ("-DLLAMA_BUILD_SERVER=ON",), ("llama-server",))
        kinds.insert(0, "llama-server")
    if lcp_available():
        kinds.append("llama_cpp.server")
    from cortex_llama import Model

    with Model(model, vocab_only=True) as m:
        eog = [t for t in range(m.vocab.n_tokens) if m.vocab.is_eog(t)]
    ban = {str(t): -100.0 for t in eog}
    kinds.append(ENGINE)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {k: {c: [] for c in args.clients} for k in kinds}
    for rep in range(args.reps):
        for kind in kinds:
            if kind == ENGINE:
                from cortex_llama import LLM

                with LLM(model, context_size=args.ctx, threads=args.threads, batch_size=args.batch,
                         ubatch_size=args.batch, n_seq_max=args.parallel, kv_unified=args.kv_unified) as llm:
                    engine_load(llm, 4, argparse.Namespace(**{**vars(args), "requests": 8}),
                                {int(k): v for k, v in ban.items()}, "warm-up")
                    for c in args.clients:
                        r = engine_load(llm, c, args, {int(k): v for k, v in ban.items()}, f"{rep}.{c}")
                        runs[kind][c].append(r)
                        print(f"rep {rep} {kind:16} clients {c:>3}: {r['req_s']:7.2f} req/s {r['tok_s']:9.1f} "
                              f"tok/s TTFT p50 {r['ttft_p50_ms']:8.1f} ms p95 {r['ttft_p95_ms']:8.1f} ms", flush=True)
                continue
            if kind == "llama_cpp.server" and rep:
                continue  # one server at a time, serialized: one rep is enough to show it
            srv = start(kind, model, args, bindir)
            try:
                asyncio.run(load(srv.url, 4, argparse.Namespace(**{**vars(args), "requests": 8}), ban,
                                 "warm-up"))
                for c in args.clients:
                    r = asyncio.run(load(srv.url, c, args, ban, f"{rep}.{c}"))
                    runs[kind][c].append(r)
                    print(f"rep {rep} {kind:16} clients {c:>3}: {r['req_s']:7.2f} req/s {r['tok_s']:9.1f} tok/s "
                          f"TTFT p50 {r['ttft_p50_ms']:8.1f} ms p95 {r['ttft_p95_ms']:8.1f} ms "
                          f"({r['tokens']} tokens)", flush=True)
            finally:
                srv.stop()
    med = {k: {c: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
               for c, rs in v.items() if rs} for k, v in runs.items()}
    lines = [f"Machine: {machine()}; model {args.model} ({model.name}); {args.threads} threads; "
             f"{args.parallel} slots, context {args.ctx} per slot "
             f"({'one unified KV cache' if args.kv_unified else 'a KV stream per slot'}), flash attention "
             f"auto, batch {args.batch}; {args.requests} streamed "
             f"/v1/completions requests of {args.max_tokens} tokens per row, greedy; median of {args.reps} "
             f"alternating runs; {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             "| server | clients | req/s | tok/s | TTFT p50 ms | TTFT p95 ms | tok/s ratio to llama-server |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in args.clients:
        for k in kinds:
            if c not in med[k]:
                continue
            r = med[k][c]
            ratio = ""
            if "llama-server" in med and k != "llama-server" and c in med["llama-server"]:
                ratio = f"{r['tok_s'] / med['llama-server'][c]['tok_s']:.3f}"
            lines.append(f"| {k} | {c} | {r['req_s']:.2f} | {r['tok_s']:.1f} | {r['ttft_p50_ms']:.1f} | "
                         f"{r['ttft_p95_ms']:.1f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (RESULTS / "server.md").write_text(text)
    (RESULTS / "server.json").write_text(json.dumps({"args": vars(args), "runs": runs, "median": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
