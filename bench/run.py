#!/usr/bin/env python3
"""cortex-llama against native llama.cpp, in one run, on the same machine.

Builds native ``llama-bench`` and ``llama-batched-bench`` from the vendored
llama.cpp (cached in ``bench/.build``), makes the models with the package's own
test-model maker (``1b`` is quantized to Q4_0 with the package's quantize), then
runs each measurement interleaved (native, ours, native, ours, ...) with the same
threads and batch settings, and reports medians and ratios to native.

    python bench/run.py                 # tiny and small
    python bench/run.py --models tiny small 1b --reps 5

Writes ``bench/results/latest.json`` and ``latest.md`` (and PNG plots when
matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENDOR = ROOT / "vendor" / "llama.cpp"
BUILD = HERE / ".build"
MODELS = HERE / ".models"
RESULTS = HERE / "results"
TOOLS = ("llama-bench", "llama-batched-bench")


# ---------------------------------------------------------------------------
# native tools
# ---------------------------------------------------------------------------
def build_native(jobs: int) -> Path:
    commit = (ROOT / "LLAMA_CPP_COMMIT").read_text().strip()
    bindir = BUILD / "bin"
    stamp = BUILD / "commit.txt"
    if stamp.is_file() and stamp.read_text().strip() == commit and all(
            (bindir / t).exists() for t in TOOLS):
        return bindir
    launcher = []
    if shutil.which("ccache"):
        launcher = ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    subprocess.run([
        "cmake", "-S", str(VENDOR), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
        *launcher, *os.environ.get("CMAKE_ARGS", "").split(),
    ], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(BUILD), "-j", str(jobs), "--target", *TOOLS],
                   check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(commit + "\n")
    return bindir


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def make_models(names: list[str]) -> dict[str, Path]:
    from cortex_llama import quantize
    from cortex_llama.testmodel import make_test_model

    MODELS.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        if name == "1b":
            q = MODELS / "1b-q4_0.gguf"
            if not q.exists():
                f16 = make_test_model(MODELS / "1b-f16.gguf", "1b")
                quantize(f16, q, "Q4_0")
                f16.unlink()
            out[name] = q
        else:
            p = MODELS / f"{name}.gguf"
            if not p.exists():
                make_test_model(p, name)
            out[name] = p
    return out


# ---------------------------------------------------------------------------
# one measurement each, native and ours
# ---------------------------------------------------------------------------
def native_bench(bindir: Path, model: Path, threads: int, n_prompt: int, n_gen: int) -> float:
    """tokens/s of one llama-bench repetition."""
    out = subprocess.run([str(bindir / "llama-bench"), "-m", str(model), "-t", str(threads),
                          "-p", str(n_prompt), "-n", str(n_gen), "-r", "1", "-b", "2048",
                          "-ub", "512", "-fa", "0", "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def native_batched(bindir: Path, model: Path, threads: int, npl: int, pp: int, tg: int) -> float:
    """Generation tokens/s of llama-batched-bench for ``npl`` parallel sequences."""
    out = subprocess.run([str(bindir / "llama-batched-bench"), "-m", str(model), "-t", str(threads),
                          "-c", str(npl * (pp + tg) + 512), "-b", "2048", "-ub", "512", "-fa", "off",
                          "-kvu", "-npp", str(pp), "-ntg", str(tg), "-npl", str(npl),
                          "--output-format", "jsonl"],
                         capture_output=True, text=True, check=True).stdout
    row = [json.loads(line) for line in out.splitlines() if line.startswith("{")][-1]
    return float(row["speed_tg"])


class Ours:
    """The object layer driven the way llama-bench drives llama.cpp."""

    def __init__(self, model_path: Path, threads: int) -> None:
        from cortex_llama import Model

        self.model = Model(model_path)
        self.threads = threads
        self.rng = np.random.default_rng(0)

    def _ctx(self, n_ctx: int, n_seq: int = 1):
        from cortex_llama import Context

        return Context(self.model, n_ctx=n_ctx, n_batch=2048, n_ubatch=512, n_seq_max=n_seq,
                       n_threads=self.threads, flash_attn=False, kv_unified=True)

    def pp(self, n: int) -> float:
        with self._ctx(n) as ctx:
            toks = self.rng.integers(0, self.model.n_vocab, n, dtype=np.int32)
            b = ctx.new_batch(n)
            b.add_many(toks, 0)
            ctx.decode(b)  # warm-up, as llama-bench does
            ctx.clear()
            t0 = time.perf_counter()
            ctx.decode(b)
            return n / (time.perf_counter() - t0)

    def tg(self, n: int, sample: bool = False) -> float:
        from cortex_llama import Sampler, SamplerChain

        with self._ctx(n + 1) as ctx:
            b = ctx.new_batch(1)
            b.add(1, 0, 0, logits=True)
            ctx.decode(b)  # warm-up
            ctx.clear()
            chain = SamplerChain([Sampler.greedy()])
            toks = self.rng.integers(0, self.model.n_vocab, n, dtype=np.int32).tolist()
            tok = 1
            t0 = time.perf_counter()
            for pos in range(n):
                b.clear()
                b.add(tok, pos, 0, logits=True)
                ctx.decode(b)
                tok = chain.sample(ctx) if sample else toks[pos]
            return n / (time.perf_counter() - t0)

    def batched(self, npl: int, pp: int, tg: int) -> float:
        """Generation tokens/s for ``npl`` sequences, one decode per step."""
        with self._ctx(npl * (pp + tg) + 512, n_seq=npl) as ctx:
            b = ctx.new_batch(max(npl * pp, npl))
            for s in range(npl):
                b.add_many(self.rng.integers(0, self.model.n_vocab, pp, dtype=np.int32), 0, s)
            ctx.decode(b)
            toks = self.rng.integers(0, self.model.n_vocab, (tg, npl), dtype=np.int32)
            seqs = np.arange(npl)
            t0 = time.perf_counter()
            for step in range(tg):
                b.clear()
                b.add_many(toks[step], np.full(npl, pp + step), seqs, logits=True)
                ctx.decode(b)
            return npl * tg / (time.perf_counter() - t0)

    def close(self) -> None:
        self.model.close()


def interleaved(reps: int, native, ours) -> tuple[float, float]:
    n, o = [], []
    for _ in range(reps):
        n.append(native())
        o.append(ours())
    return statistics.median(n), statistics.median(o)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "1b"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batched", nargs="*", type=int, default=[8, 32])
    args = ap.parse_args()

    bindir = build_native(args.threads)
    paths = make_models(args.models)
    rows = []
    for name, path in paths.items():
        ours = Ours(path, args.threads)
        t = args.threads
        for test, nat, our in [
            ("pp512", lambda: native_bench(bindir, path, t, 512, 0), lambda: ours.pp(512)),
            ("tg128", lambda: native_bench(bindir, path, t, 0, 128), lambda: ours.tg(128)),
            ("tg128+greedy", lambda: native_bench(bindir, path, t, 0, 128),
             lambda: ours.tg(128, sample=True)),
        ]:
            n, o = interleaved(args.reps, nat, our)
            rows.append({"model": name, "test": test, "native_tps": n, "ours_tps": o, "ratio": o / n,
                         "overhead_us_per_token": (1 / o - 1 / n) * 1e6 if test.startswith("tg") else None})
            print(f"{name:6} {test:13} native {n:10.1f} t/s   ours {o:10.1f} t/s   ratio {o / n:.3f}",
                  flush=True)
        for npl in args.batched:
            pp, tg = 128, 32 if name == "1b" else 128
            n, o = interleaved(max(3, args.reps // 2), lambda: native_batched(bindir, path, t, npl, pp, tg),
                               lambda: ours.batched(npl, pp, tg))
            rows.append({"model": name, "test": f"batched-tg x{npl}", "native_tps": n, "ours_tps": o,
                         "ratio": o / n, "overhead_us_per_token": None})
            print(f"{name:6} batched x{npl:<4} native {n:10.1f} t/s   ours {o:10.1f} t/s   "
                  f"ratio {o / n:.3f}", flush=True)
        ours.close()

    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": machine(), "threads": args.threads, "reps": args.reps,
            "commit": (ROOT / "LLAMA_CPP_COMMIT").read_text().strip(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"Machine: {meta['machine']}; threads {args.threads}; median of {args.reps}; "
             f"llama.cpp {meta['commit'][:10]}; {meta['date']}", "",
             "| model | test | native t/s | cortex-llama t/s | ratio | Python overhead µs/token |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ov = "" if r["overhead_us_per_token"] is None else f"{r['overhead_us_per_token']:.1f}"
        lines.append(f"| {r['model']} | {r['test']} | {r['native_tps']:.1f} | {r['ours_tps']:.1f} | "
                     f"{r['ratio']:.3f} | {ov} |")
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
