#!/usr/bin/env python3
"""Concurrent streams on one LLM: aggregate tokens/s, time to first token and
inter-token latency, through threads and through asyncio, against native
``llama-batched-bench`` with as many sequences.

    python3 bench/concurrency.py                        # small model, 1 4 8 16 32 streams
    python3 bench/concurrency.py --streams 1 8 --tokens 64 --native

Each row is the median of ``--reps`` runs (by generation tokens/s), interleaved
with as many native runs (their median); ``gen / native`` is the median of the
ratios of each run to the native run just before it. Each of N streams gets its own random prompt of ``--prompt`` tokens and generates
``--tokens`` tokens greedily (end-of-generation banned), all submitted at once to
an ``LLM`` with ``n_seq_max=N``. Aggregate tokens/s is all generated tokens over
the wall time from the first submit to the last token (prefill included);
``gen tok/s`` is the same over the time after the last stream's first token, the
part that ``llama-batched-bench``'s ``speed_tg`` measures. Latencies are p50/p95
over all streams (inter-token: per generated token, from the times deltas arrive).

The native side is llama-batched-bench from ``--native-bin``, bench/.build
(run.py's) or another build of the vendored tree under bench/; ``--native``
builds it with bench/run.py's ``build_native`` when none is found, else the
native column stays empty. Same threads, ``-kvu``, flash attention off. Writes
bench/results/concurrency.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (bench/run.py: models, native tools, machine description)


class Trace:
    """Arrival times of one stream's deltas with its token count at each."""

    def __init__(self) -> None:
        self.t_submit = 0.0
        self.points: list[tuple[float, int]] = []

    def ttft(self) -> float:
        return self.points[0][0] - self.t_submit

    def itl(self) -> list[float]:
        out: list[float] = []
        for (t0, n0), (t1, n1) in zip(self.points, self.points[1:]):
            if n1 > n0:
                out.extend([(t1 - t0) / (n1 - n0)] * (n1 - n0))
        return out


def _prompts(llm: Any, n: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    vocab = llm.model.vocab
    ok = [t for t in range(llm.model.n_vocab) if not vocab.is_eog(t) and not vocab.is_control(t)]
    return [[int(t) for t in rng.choice(ok, length)] for _ in range(n)]


def via_threads(llm: Any, prompts: list[list[int]], params: Any) -> list[Trace]:
    traces = [Trace() for _ in prompts]
    start = threading.Barrier(len(prompts))

    def work(i: int) -> None:
        start.wait()
        tr = traces[i]
        tr.t_submit = time.perf_counter()
        req = llm.submit(prompts[i], params)
        for _ in req:
            tr.points.append((time.perf_counter(), len(req.tokens)))
        tr.points.append((time.perf_counter(), len(req.result().tokens)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return traces


def via_asyncio(llm: Any, prompts: list[list[int]], params: Any) -> list[Trace]:
    traces = [Trace() for _ in prompts]

    async def one(i: int) -> None:
        tr = traces[i]
        tr.t_submit = time.perf_counter()
        stream = llm.astream(prompts[i], params)
        async for _ in stream:
            tr.points.append((time.perf_counter(), len(stream.request.tokens)))
        c = await stream.request.aresult()
        tr.points.append((time.perf_counter(), len(c.tokens)))

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(len(prompts))))

    asyncio.run(main())
    return traces


def measure(path: Path, n: int, mode: str, n_prompt: int, n_gen: int, threads: int) -> dict[str, float]:
    from cortex_llama import LLM, GenerationParams

    ctx_size = n * (n_prompt + n_gen) + 256
    # the native side's settings: one unified cache (-kvu), flash attention off
    with LLM(path, context_size=ctx_size, threads=threads, n_seq_max=n, batch_size=max(512, n),
             embeddings=False, kv_unified=True, flash_attn=False) as llm:
        vocab = llm.model.vocab
        no_eog = {t: float("-inf") for t in range(llm.model.n_vocab) if vocab.is_eog(t)}
        params = GenerationParams(temperature=0, max_tokens=n_gen, logit_bias=no_eog)
        # warm-up: the batch shapes of this run (first decodes allocate and plan)
        llm.generate(_prompts(llm, n, n_prompt, seed=99), params, max_tokens=4)
        prompts = _prompts(llm, n, n_prompt)
        before = llm.metrics()
        traces = (via_threads if mode == "threads" else via_asyncio)(llm, prompts, params)
        after = llm.metrics()
    t0 = min(tr.t_submit for tr in traces)
    t_end = max(tr.points[-1][0] for tr in traces)
    t_last_first = max(tr.points[0][0] for tr in traces)
    total = sum(tr.points[-1][1] for tr in traces)
    gen_after = sum(tr.points[-1][1] - next(c for t, c in tr.points if t >= t_last_first)
                    for tr in traces)
    ttft = [tr.ttft() * 1000 for tr in traces]
    itl = [x * 1000 for tr in traces for x in tr.itl()] or [0.0]
    decodes = after["decodes_total"] - before["decodes_total"]
    return {
        "streams": n, "mode": mode, "tokens": total,
        "tok_s": total / (t_end - t0),
        "gen_tok_s": gen_after / (t_end - t_last_first) if t_end > t_last_first else float("nan"),
        "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p95_ms": float(np.percentile(ttft, 95)),
        "itl_p50_ms": float(np.percentile(itl, 50)), "itl_p95_ms": float(np.percentile(itl, 95)),
        "decodes": decodes,
        "tokens_per_decode": (after["decode_tokens_total"] - before["decode_tokens_total"]) / max(decodes, 1),
    }


def native_bindir(build: bool, jobs: int, given: Path | None = None) -> Path | None:
    """A folder with llama-batched-bench: ``given``, bench/.build (run.py's), or
    another build of the vendored tree under bench/ (e.g. bench/.build-server)."""
    for bindir in [given] if given is not None else [run.BUILD / "bin",
                                                      *sorted(HERE.glob(".build*/bin"))]:
        if (bindir / "llama-batched-bench").exists():
            return bindir
    if given is not None:
        raise SystemExit(f"no llama-batched-bench in {given}")
    if build:
        return run.build_native(jobs)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="tiny, small or 1b (bench/run.py's models)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--modes", nargs="+", default=["threads", "asyncio"], choices=["threads", "asyncio"])
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream")
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per stream")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--native", action="store_true", help="build llama-batched-bench if missing")
    ap.add_argument("--native-bin", type=Path, help="folder holding llama-batched-bench")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="runs per row; the median row is kept")
    args = ap.parse_args()

    path = run.make_models([args.model])[args.model]
    bindir = native_bindir(args.native, args.jobs, args.native_bin)
    rows: list[dict[str, Any]] = []
    for n in args.streams:
        natives: list[float] = []
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
        for _ in range(args.reps):  # interleaved: native, ours, native, ours, ...
            nat = (run.native_batched(bindir, path, args.threads, n, args.prompt, args.tokens)
                   if bindir is not None else None)
            if nat is not None:
                natives.append(nat)
            for mode in args.modes:
                r = measure(path, n, mode, args.prompt, args.tokens, args.threads)
                # the ratio to the native run just before: the machine's speed swings
                # between runs (shared cores), much less within one pair
                r["ratio"] = r["gen_tok_s"] / nat if nat else None
                runs[mode].append(r)
        native = float(np.median(natives)) if natives else None
        for mode in args.modes:
            ordered = sorted(runs[mode], key=lambda r: r["gen_tok_s"])
            row = ordered[len(ordered) // 2]  # the median run by generation tokens/s
            row["native_tg_tok_s"] = native
            ratios = [r["ratio"] for r in runs[mode] if r["ratio"] is not None]
            row["ratio"] = float(np.median(ratios)) if ratios else None
            rows.append(row)
            print(json.dumps(row), flush=True)

    RESULTS = run.RESULTS
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "prompt": args.prompt, "tokens": args.tokens, "threads": args.threads,
            "reps": args.reps, "machine": run.machine(), "load_average": os.getloadavg()}
    (RESULTS / "concurrency.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Concurrent streams: {args.model} model, prompt {args.prompt} + {args.tokens} generated tokens "
        f"per stream, {args.threads} threads",
        "",
        f"Machine: {meta['machine']}; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in meta['load_average'])} (a shared machine: other jobs ran); "
        f"median of {args.reps} runs per row.",
        "",
        "| streams | via | tok/s (wall) | gen tok/s | native tg tok/s | gen / native (paired) | TTFT p50 / p95 ms "
        "| ITL p50 / p95 ms | tokens per decode |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nat = r["native_tg_tok_s"]
        nat_s = "" if nat is None else f"{nat:.1f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['streams']} | {r['mode']} | {r['tok_s']:.1f} | {r['gen_tok_s']:.1f} | "
            f"{nat_s} | {ratio} | "
            f"{r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | {r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f} | "
            f"{r['tokens_per_decode']:.1f} |")
    if bindir is None:
        lines += ["", "Native llama-batched-bench: not built here (run with `--native` to build it in "
                      "bench/.build)."]
    (RESULTS / "concurrency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
