#!/usr/bin/env python3
"""Per-token cost in CPU instructions (valgrind callgrind), native llama.cpp vs cortex-llama.

Wall-clock ratios on a shared 2-core machine swing by 15-30 % between runs;
instruction counts do not (callgrind counts the same total for the same binary
and inputs whatever else the machine does). Each side generates N1 and then N2
tokens on one thread; (instructions(N2) - instructions(N1)) / (N2 - N1) is the
cost of one generated token, free of start-up and model-load costs.

    python3 bench/instructions.py [--models tiny small] [--n1 32 --n2 160]

valgrind 3.19 cannot run AVX-512 code, so both sides are built here for AVX2
(``GGML_NATIVE=OFF``): llama-bench in bench/.build-valgrind, cortex-llama's
libraries in bench/.build-valgrind-py (loaded through ``CORTEX_LLAMA_LIB_DIR``).
Needs valgrind, cmake and the models of ``bench/run.py`` (run it once first).
Writes bench/results/instructions.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = HERE / ".models"
RESULTS = HERE / "results"
# what valgrind can execute: AVX2 and friends, no AVX-512
CPU_ARGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
            "-DGGML_F16C=ON", "-DGGML_BMI2=ON")
PY_BUILD = HERE / ".build-valgrind-py"


def build_ours(jobs: int) -> Path:
    """cortex-llama's libraries with CPU_ARGS; returns their lib folder."""
    lib_dir = PY_BUILD / "install" / "cortex_llama" / "lib"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(PY_BUILD), "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_RPC=OFF", *CPU_ARGS], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(PY_BUILD), "-j", str(jobs)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--install", str(PY_BUILD), "--prefix", str(PY_BUILD / "install")],
                   check=True, stdout=subprocess.DEVNULL)
    return lib_dir

# The Python side: one thread, the same context settings as llama-bench's tg test
# (whose context holds exactly the generated tokens: attention work grows with it).
PY_SIDE = textwrap.dedent("""
    import gc
    import sys
    import numpy as np
    from cortex_llama import LLM, Context, Model, Sampler, SamplerChain
    path, layer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if layer.startswith("LLM"):
        llm = LLM(path, threads=1, context_size=n + 1, batch_size=2048, ubatch_size=512,
                  n_seq_max=1, flash_attn=False, embeddings=False)
        vocab = llm.model.vocab
        no_eos = {t: float("-inf") for t in range(llm.model.n_vocab) if vocab.is_eog(t)} or None
        gc.freeze()  # set-up objects out of the collector's way, so that a full
                     # collection does not land in one run and not the other
        if layer == "LLM.complete":
            assert len(llm.complete([1], temperature=0, max_tokens=n, logit_bias=no_eos).tokens) == n
        else:
            for _ in llm.stream([1], temperature=0, max_tokens=n, logit_bias=no_eos):
                pass
    else:
        model = Model(path)
        ctx = Context(model, n_ctx=n, n_batch=2048, n_ubatch=512, n_threads=1, flash_attn=False)
        rng = np.random.default_rng(0)
        if layer == "objects-pp":
            batch = ctx.new_batch(n)
            batch.add_many(rng.integers(0, model.n_vocab, n, dtype=np.int32), 0)
            gc.freeze()
            ctx.decode(batch)
        else:
            toks = rng.integers(0, model.n_vocab, n).tolist()
            chain = SamplerChain([Sampler.greedy()])
            gc.freeze()
            tok = 1
            for pos in range(n):
                ctx.decode_one(tok, pos)
                tok = chain.sample(ctx) if layer == "objects+greedy" else toks[pos]
""")

LAYERS = ["objects", "objects+greedy", "LLM.complete", "LLM.stream"]


def instructions(cmd: list[str], env: dict[str, str] | None = None) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                         capture_output=True, text=True, env=env)
    m = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} failed under callgrind:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def native_cmd(bindir: Path, model: Path, n: int, prompt: bool = False) -> list[str]:
    """llama-bench generating ``n`` tokens (or, with ``prompt``, one prompt of ``n``)."""
    p, g = (n, 0) if prompt else (0, n)
    return [str(bindir / "llama-bench"), "-m", str(model), "-t", "1", "-p", str(p), "-n", str(g),
            "-r", "1", "--no-warmup", "-b", "2048", "-ub", "512", "-fa", "0", "-o", "json"]


def per_token(make_cmd, n1: int, n2: int, env: dict[str, str] | None = None) -> float:
    return (instructions(make_cmd(n2), env) - instructions(make_cmd(n1), env)) / (n2 - n1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "small"])
    ap.add_argument("--n1", type=int, default=32)
    ap.add_argument("--n2", type=int, default=160)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from run import build_native

    bindir = build_native(args.jobs, HERE / ".build-valgrind", CPU_ARGS, ("llama-bench",))
    # numpy's OpenBLAS starts a thread per core that spins for a while after start-up:
    # instructions that depend on timing, so keep it to the calling thread.
    env = {**os.environ, "CORTEX_LLAMA_LIB_DIR": str(build_ours(args.jobs)),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    rows = []
    for name in args.models:
        model = MODELS / (f"{name}.gguf" if name != "1b" else "1b-q4_0.gguf")
        native = per_token(lambda n: native_cmd(bindir, model, n), args.n1, args.n2)
        print(f"{name}: native llama-bench {native:,.0f} instructions/token", flush=True)
        for layer in LAYERS:
            ours = per_token(lambda n: [sys.executable, "-c", PY_SIDE, str(model), layer, str(n)],
                             args.n1, args.n2, env)
            rows.append({"model": name, "test": "tg", "layer": layer, "native": native, "ours": ours,
                         "ratio": native / ours, "extra_per_token": ours - native})
            print(f"  {layer:<15} {ours:,.0f}  (native/ours {native / ours:.3f})", flush=True)
        # prompt processing: one batch of 64 against one of 576 tokens (two micro-batches)
        native = per_token(lambda n: native_cmd(bindir, model, n, prompt=True), 64, 576)
        ours = per_token(lambda n: [sys.executable, "-c", PY_SIDE, str(model), "objects-pp", str(n)],
                         64, 576, env)
        rows.append({"model": name, "test": "pp", "layer": "objects", "native": native, "ours": ours,
                     "ratio": native / ours, "extra_per_token": ours - native})
        print(f"  pp objects      {ours:,.0f} vs native {native:,.0f} ({native / ours:.3f})", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructions.json").write_text(json.dumps(rows, indent=1))
    lines = [f"Instructions per token (callgrind, 1 thread; tg: generated tokens {args.n1}..{args.n2}, "
             "pp: prompt tokens 64..576); "
             "ratio = native / cortex-llama, a proxy for the speed ratio that does not depend "
             "on machine noise.", "",
             "| model | test | cortex-llama layer | native instr/token | cortex-llama instr/token | "
             "ratio | extra instr/token |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['test']} | {r['layer']} | {r['native']:,.0f} | {r['ours']:,.0f} | "
                     f"{r['ratio']:.3f} | {r['extra_per_token']:,.0f} |")
    (RESULTS / "instructions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
