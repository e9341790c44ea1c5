"""The engine against native llama.cpp with llama.cpp's defaults, in both KV layouts.

    python3 bench/engine.py [--model smollm2-135m-instruct] [--threads 2] [--reps 3] [--streams 8 32] [--no-tg]

Rows (median of ``--reps``, native and ours interleaved, same run, as ratios):

* ``tg128 fresh``: ``LLM.complete`` of 128 greedy tokens on a fresh ``LLM`` against
  ``llama-bench -n 128`` (both with flash attention auto, llama.cpp's default);
* ``tg128 after 8``: the same after 8 earlier requests left their cells in idle slots;
* ``batched xN``: ``LLM.generate`` of N prompts of 128 tokens, 128 new tokens each,
  generation tokens/s against ``llama-batched-bench -npp 128 -ntg 128 -npl N``,
  with one KV stream per slot (ours: the default; native: no ``-kvu``) and with the
  unified cache (ours: ``kv_unified=True``; native: ``-kvu``).

Native binaries come from ``bench/.build-server`` (``scripts/build_llama_server.py``
plus ``cmake --build bench/.build-server --target llama-bench llama-batched-bench``).
Writes ``bench/results/engine.md`` and ``.json`` (``--out`` names others).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import interleaved  # noqa: E402  (native and ours alternated, medians)
BIN = HERE / ".build-server" / "bin"
N_GEN = 128
N_PROMPT = 128


def native_tg(model: Path, threads: int) -> float:
    out = subprocess.run([str(BIN / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "0",
                          "-n", str(N_GEN), "-r", "1", "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def native_batched(model: Path, threads: int, npl: int, unified: bool) -> float:
    per_seq = N_PROMPT + N_GEN + 256
    cmd = [str(BIN / "llama-batched-bench"), "-m", str(model), "-t", str(threads),
           "-c", str(npl * per_seq), "-npp", str(N_PROMPT), "-ntg", str(N_GEN), "-npl", str(npl),
           *(["-kvu"] if unified else []), "--output-format", "jsonl"]
    for _ in range(8):  # its asynchronous log sometimes swallows the result line
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if rows:
            return float(rows[-1]["speed_tg"])
    raise RuntimeError("llama-batched-bench printed no result: " + " ".join(cmd))


def _no_eog(llm) -> dict[int, float]:
    vocab = llm.model.vocab
    return {t: float("-inf") for t in range(vocab.n_tokens) if vocab.is_eog(t)}


def ours_tg(model: Path, threads: int, earlier: int) -> float:
    from cortex_llama import LLM

    with LLM(model, threads=threads, n_seq_max=8) as llm:
        ban = _no_eog(llm)
        for i in range(earlier):
            llm.complete(f"Earlier request number {i} about something else entirely.", temperature=0,
                         max_tokens=64, logit_bias=ban)
        c = llm.complete("Once upon a time", temperature=0, max_tokens=N_GEN, logit_bias=ban)
        return (N_GEN - 1) / (c.timings.generation_ms / 1000)  # tokens after the first


def ours_batched(model: Path, threads: int, npl: int, unified: bool) -> float:
    """Generation tokens/s: the time from the last first token to the last token."""
    import numpy as np

    from cortex_llama import LLM

    with LLM(model, threads=threads, n_seq_max=npl, batch_size=2048, kv_unified=unified,
             context_size=(N_PROMPT + N_GEN + 256) * (npl if unified else 1)) as llm:
        ban = _no_eog(llm)
        rng = np.random.default_rng(0)
        prompts = [rng.integers(300, llm.model.n_vocab, N_PROMPT).tolist() for _ in range(npl)]
        t0 = time.perf_counter()
        reqs = [llm.submit(p, temperature=0, max_tokens=N_GEN, logit_bias=ban) for p in prompts]
        done = [r.result() for r in reqs]
        end = time.perf_counter()
        first = max(t0 + c.timings.first_token_ms / 1000 for c in done)
        return npl * (N_GEN - 1) / (end - first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--streams", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--no-tg", action="store_true", help="only the batched rows")
    ap.add_argument("--out", default="engine", help="results name: bench/results/<out>.md and .json")
    args = ap.parse_args()
    from cortex_llama import registry

    model = Path(args.model) if Path(args.model).exists() else registry.pull(args.model)
    rows = []

    def row(name: str, native, ours) -> None:
        n, o = interleaved(args.reps, native, ours)
        rows.append({"test": name, "native": round(n, 1), "ours": round(o, 1), "ratio": round(o / n, 3)})
        print(rows[-1], flush=True)

    t = args.threads
    if not args.no_tg:
        row("tg128 fresh", lambda: native_tg(model, t), lambda: ours_tg(model, t, 0))
        row("tg128 after 8 requests", lambda: native_tg(model, t), lambda: ours_tg(model, t, 8))
    for npl in args.streams:
        for unified in (False, True):
            label = f"batched x{npl} ({'unified' if unified else 'per-slot'})"
            row(label, lambda: native_batched(model, t, npl, unified),
                lambda: ours_batched(model, t, npl, unified))
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    head = (f"# Engine v2 against native llama.cpp (defaults: flash attention auto)\n\n"
            f"Model {model.name}, {t} threads, {cpu}, median of {args.reps} interleaved runs, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            "| test | native tok/s | cortex-llama tok/s | ratio |\n|---|---:|---:|---:|\n")
    body = "".join(f"| {r['test']} | {r['native']} | {r['ours']} | {r['ratio']} |\n" for r in rows)
    out = HERE / "results"
    (out / f"{args.out}.md").write_text(head + body)
    (out / f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    print(head + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
