#!/usr/bin/env python3
"""Speculative decoding (n-gram lookup, a draft model): speed against our own
plain run and against native ``llama-server`` with the same speculation settings.

Both servers get the same model, slots, context and threads; each runs once
without speculation and once with ``--spec-type TYPE --draft-max N``, one
configuration at a time, alternating ``--reps`` times (medians reported). Loads:

* **copy**: "add a docstring and return the whole function" chats over 40-70
  line Python functions of the vendored tree's gguf-py (pinned text), the
  copy-heavy case lookup serves;
* **natural**: story prompts, where lookups rarely match;

each by 1 client (generation tokens/s from the server's own ``timings``) and by
8 concurrent clients (all tokens generated / wall time). Every request of every
run has its own prompt: n-gram pools that outlive a request (``ngram-mod``)
cannot draft one run from an earlier one's output. Greedy, fixed ``max_tokens``.

``--draft-pair`` measures a draft model instead: the synthetic 1b-shaped F16
model as the target and its Q4_0 copy as the draft (``--model-draft``, type
draft-simple), on the natural loads (random weights copy nothing); written to
``speculative-draft.md``.

    python bench/speculative.py                          # ngram-simple, 3 reps
    python bench/speculative.py --spec-type ngram-mod --reps 2
    python bench/speculative.py --draft-pair --reps 1 --max-tokens 64

Writes ``bench/results/speculative.md`` and ``speculative.json``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import MODELS, RESULTS, build_native, machine  # noqa: E402
from server import BUILD_SERVER, Proc, free_port  # noqa: E402

GGUF_PY = HERE.parent / "vendor" / "llama.cpp" / "gguf-py" / "gguf"
TOPICS = ["a lighthouse keeper", "a lost robot", "two rival bakers", "a river that ran backwards", "a quiet comet",
          "the last library", "a clockmaker's apprentice", "an island of cats", "a mapmaker", "a winter market",
          "a broken violin", "the tallest tree", "a tired dragon", "a secret garden", "a desert train", "a snow fox"]


def copy_sources(n: int) -> list[str]:
    """``n`` functions of 40-70 lines from gguf-py, in a fixed order (cycled when short)."""
    found: list[str] = []
    for path in sorted(GGUF_PY.glob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.end_lineno is not None \
                    and 40 <= node.end_lineno - node.lineno + 1 <= 70:
                body = lines[node.lineno - 1: node.end_lineno]
                indent = len(body[0]) - len(body[0].lstrip())
                found.append("\n".join(line[indent:] for line in body))
    return [found[i % len(found)] for i in range(n)]


def copy_prompt(source: str) -> str:
    # of three phrasings tried on SmolLM2-135M (comments, type hints, a docstring), the one it
    # copies most faithfully (291 of 400 drafted tokens accepted, against 136 and 174)
    return "Add a docstring to this Python function and return the whole function:\n\n```python\n" + source + "\n```"


def natural_prompt(i: int) -> str:
    return f"Write a short story about {TOPICS[i % len(TOPICS)]}. Story {i}."


def start(kind: str, args: argparse.Namespace, spec: bool) -> Proc:
    port = free_port()
    common = ["-c", str(args.ctx * args.parallel), "-t", str(args.threads), "--port", str(port)]
    spec_args = ["--spec-type", args.spec_type, "--draft-max", str(args.draft_max)] if spec else []
    if spec and args.model_draft:
        spec_args += ["--model-draft", args.model_draft]
    if kind == "cortex-llama":
        cmd = [sys.executable, "-m", "cortex_llama", "serve", args.model, "--parallel", str(args.parallel),
               "--log-level", "warning", *common, *spec_args]
    else:
        cmd = [str(BUILD_SERVER / "bin" / "llama-server"), "-m", args.model, "-np", str(args.parallel),
               "-tb", str(args.threads), "--no-webui", *common,
               *(["--spec-type", args.spec_type, "--spec-draft-n-max", str(args.draft_max)] if spec else []),
               *(["--model-draft", args.model_draft] if spec and args.model_draft else [])]
    return Proc(f"{kind}{'-spec' if spec else ''}", cmd, port)


async def chat(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    r = await client.post(url + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


async def load(url: str, prompts: list[str], clients: int, max_tokens: int) -> dict[str, float]:
    """Run ``prompts`` with ``clients`` at once: generation tok/s (1 client: the
    server's timings; more: tokens / wall time), drafted and accepted tokens."""
    async with httpx.AsyncClient() as client:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(clients)

        async def guarded(p: str) -> dict[str, Any]:
            async with sem:
                return await chat(client, url, p, max_tokens)
        out = await asyncio.gather(*(guarded(p) for p in prompts))
        wall = time.perf_counter() - t0
    tokens = sum(o["usage"]["completion_tokens"] for o in out)
    timings = [o.get("timings", {}) for o in out]
    gen_ms = sum(t.get("predicted_ms", 0.0) for t in timings)
    rate = tokens / (gen_ms / 1000) if clients == 1 and gen_ms > 0 else tokens / wall
    return {"tok_s": rate, "tokens": tokens, "draft_n": sum(t.get("draft_n", 0) for t in timings),
            "draft_n_accepted": sum(t.get("draft_n_accepted", 0) for t in timings)}


def loads(args: argparse.Namespace, rep: int) -> dict[str, tuple[list[str], int]]:
    """The prompts of each load for repetition ``rep`` (new for every run)."""
    n8 = 8
    base = rep * (2 + 2 * n8) * 2
    sources = copy_sources(base + 64)
    if args.model_draft:  # the random-weight pair: natural prompts only
        return {"natural, 1 stream": ([natural_prompt(base + i) for i in range(2)], 1),
                "natural, 8 streams": ([natural_prompt(base + 2 + i) for i in range(n8)], n8)}
    return {
        "copy, 1 stream": ([copy_prompt(sources[base + i]) for i in range(2)], 1),
        "copy, 8 streams": ([copy_prompt(sources[base + 2 + i]) for i in range(n8)], n8),
        "natural, 1 stream": ([natural_prompt(base + i) for i in range(2)], 1),
        "natural, 8 streams": ([natural_prompt(base + 2 + i) for i in range(n8)], n8),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a GGUF (default: SmolLM2-135M-Instruct Q4_1 from the registry)")
    ap.add_argument("--spec-type", default="ngram-simple")
    ap.add_argument("--draft-max", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=2048, help="KV cells per slot")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-native", action="store_true")
    ap.add_argument("--out", default=None, help="results name (default: speculative, speculative-draft)")
    ap.add_argument("--model-draft", default=None, help="a draft model GGUF (speculative type draft-simple)")
    ap.add_argument("--draft-pair", action="store_true",
                    help="the synthetic 1b F16 target with its Q4_0 copy as the draft model")
    args = ap.parse_args()
    if args.draft_pair:
        args.model, args.model_draft = (str(p) for p in draft_pair())
    if args.model_draft:
        args.spec_type = "draft-simple"
    args.out = args.out or ("speculative-draft" if args.model_draft else "speculative")
    if args.model is None:
        from cortex_llama import registry

        args.model = str(registry.pull("smollm2-135m-instruct"))
    kinds = ["cortex-llama"] if args.skip_native else ["cortex-llama", "llama-server"]
    if not args.skip_native:
        build_native(args.jobs, BUILD_SERVER, ("-DLLAMA_BUILD_SERVER=ON",), ("llama-server",))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for rep in range(args.reps):
        for kind in kinds:
            for spec in (False, True):
                name = f"{kind}{' + ' + args.spec_type if spec else ''}"
                proc = start(kind, args, spec)
                try:
                    for load_name, (prompts, clients) in loads(args, rep).items():
                        r = asyncio.run(load(proc.url, prompts, clients, args.max_tokens))
                        results.setdefault(name, {}).setdefault(load_name, []).append(r)
                        print(f"rep {rep} {name:32s} {load_name:20s} {r['tok_s']:7.1f} tok/s  "
                              f"drafted {r['draft_n']:5.0f} accepted {r['draft_n_accepted']:5.0f}", flush=True)
                finally:
                    proc.stop()
    write(args, kinds, results)
    return 0


def draft_pair() -> tuple[Path, Path]:
    """The 1b-shaped F16 test model and its Q4_0 copy (made once, in bench/.models)."""
    from cortex_llama import quantize
    from cortex_llama.testmodel import make_test_model

    MODELS.mkdir(parents=True, exist_ok=True)
    target, draft = MODELS / "1b-f16.gguf", MODELS / "1b-f16-draft-q4_0.gguf"
    if not target.exists():
        make_test_model(target, "1b")
    if not draft.exists():
        quantize(target, draft, "Q4_0")
    return target, draft


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def write(args: argparse.Namespace, kinds: list[str], results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    loads_ = list(next(iter(results.values())))
    draft = f", draft model {Path(args.model_draft).name}" if args.model_draft else ""
    lines = [f"# Speculative decoding ({args.spec_type}, draft-max {args.draft_max})", "",
             f"{machine()}; model {Path(args.model).name}{draft}; {args.threads} threads, {args.parallel} slots of "
             f"{args.ctx} cells, max_tokens {args.max_tokens}, medians of {args.reps} reps.", "",
             "| server | load | plain tok/s | speculative tok/s | speedup | accepted / drafted |",
             "|---|---|---:|---:|---:|---:|"]
    summary: dict[str, Any] = {"args": vars(args), "rows": []}
    for kind in kinds:
        plain, spec = results[kind], results[f"{kind} + {args.spec_type}"]
        for name in loads_:
            a, b = _median(plain[name], "tok_s"), _median(spec[name], "tok_s")
            drafted = sum(r["draft_n"] for r in spec[name])
            accepted = sum(r["draft_n_accepted"] for r in spec[name])
            rate = f"{accepted / drafted:.2f} ({accepted:.0f} / {drafted:.0f})" if drafted else "-"
            lines.append(f"| {kind} | {name} | {a:.1f} | {b:.1f} | {b / a:.3f} | {rate} |")
            summary["rows"].append({"server": kind, "load": name, "plain": a, "speculative": b,
                                    "speedup": b / a, "drafted": drafted, "accepted": accepted})
    if len(kinds) == 2:
        lines += ["", "| load | cortex-llama / llama-server, both speculating |", "|---|---:|"]
        for name in loads_:
            ours = _median(results[f"cortex-llama + {args.spec_type}"][name], "tok_s")
            theirs = _median(results[f"llama-server + {args.spec_type}"][name], "tok_s")
            lines.append(f"| {name} | {ours / theirs:.3f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
