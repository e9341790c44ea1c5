"""Batch invariance and its price: default settings against ``deterministic=True``.

    python3 bench/determinism.py [--model smollm2-135m-instruct] [--streams 32] [--tokens 64]

For each mode, N greedy prompts (varied lengths) run solo, one after another,
then all N together on one ``LLM`` with ``n_seq_max=N``; the row counts the
streams whose tokens differ from their solo run and where the first difference
falls, and the generation tokens/s of the N-stream run (the time after the last
stream's first token). The ratio of the deterministic mode's tokens/s to the
default's is the price of invariance. Writes bench/results/determinism.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ["king", "queen", "dragon", "farmer", "wizard", "knight", "cat", "fox"]


def prompts(n: int) -> list[str]:
    return [f"Question {i}: tell me a story about a {WORDS[i % 8]} who lived near the sea. " * (1 + i % 4)
            for i in range(n)]


def run(model: Path, n: int, n_tokens: int, threads: int, deterministic: bool) -> dict[str, object]:
    from cortex_llama import LLM

    with LLM(model, threads=threads, n_seq_max=n, context_size=1024, batch_size=max(512, n),
             deterministic=deterministic) as llm:
        ban = {t: float("-inf") for t in range(llm.model.n_vocab) if llm.model.vocab.is_eog(t)}
        ps = prompts(n)
        solo = [llm.complete(p, temperature=0, max_tokens=n_tokens, logit_bias=ban).tokens for p in ps]
        t0 = time.perf_counter()
        reqs = [llm.submit(p, temperature=0, max_tokens=n_tokens, logit_bias=ban) for p in ps]
        done = [r.result() for r in reqs]
        end = time.perf_counter()
    first = max(t0 + c.timings.first_token_ms / 1000 for c in done)
    diffs = [next((k for k, (a, b) in enumerate(zip(s, c.tokens)) if a != b), None)
             for s, c in zip(solo, done)]
    parted = sorted(d for d in diffs if d is not None)
    return {"mode": "deterministic" if deterministic else "default", "streams": n,
            "differ": len(parted), "first_differences": parted,
            "gen_tok_s": round(n * (n_tokens - 1) / (end - first), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--streams", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from cortex_llama import registry

    model = Path(args.model) if Path(args.model).exists() else registry.pull(args.model)
    rows = []
    for n in args.streams:
        for det in (False, True):
            rows.append(run(model, n, args.tokens, args.threads, det))
            print(rows[-1], flush=True)
    head = (f"# Batch invariance: default vs deterministic=True\n\nModel {model.name}, {args.threads} threads, "
            f"{args.tokens} greedy tokens per stream, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            "| streams | mode | streams differing from solo | first differences at token | gen tok/s |\n"
            "|---:|---|---:|---|---:|\n")
    body = "".join(f"| {r['streams']} | {r['mode']} | {r['differ']} of {r['streams']} | "
                   f"{r['first_differences'] or '-'} | {r['gen_tok_s']} |\n" for r in rows)
    (HERE / "results" / "determinism.md").write_text(head + body)
    (HERE / "results" / "determinism.json").write_text(json.dumps(rows, indent=1))
    print(head + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
