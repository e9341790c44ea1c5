#!/usr/bin/env python3
"""cortex-llama against native llama.cpp, in one run, on the same machine.

Builds native ``llama-bench`` and ``llama-batched-bench`` from the vendored
llama.cpp (cached in ``bench/.build``), makes the models with the package's own
test-model maker (``1b`` is quantized to Q4_0 with the package's quantize), then
runs each measurement interleaved (native, ours, native, ours, ...) with the same
threads and batch settings, and reports medians and ratios to native.

    python bench/run.py                 # tiny and small
    python bench/run.py --models tiny small 1b --reps 5
    python bench/run.py --models smollm2 --reps 3 --out real   # the real model, + llama-cpp-python

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
import threading
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
#: real models of the registry, by their short name here
REAL = {"smollm2": "smollm2-135m-instruct"}
LCP_PYTHON = HERE / ".venv-lcp" / "bin" / "python"
#: the text prompt of the tg128 rows that compare with llama-cpp-python: greedy
#: continues it for 128 tokens without an end-of-generation token
TEXT_PROMPT = "Once upon a time"


# ---------------------------------------------------------------------------
# native tools
# ---------------------------------------------------------------------------
def build_native(jobs: int, build: Path = BUILD, cmake_args: tuple[str, ...] = (),
                 tools: tuple[str, ...] = TOOLS) -> Path:
    """Build the native tools into ``build`` (cached: rebuilt only when the pinned
    commit or the CMake arguments change); returns the folder of the binaries."""
    no_amx = f"-DCMAKE_PROJECT_INCLUDE={ROOT / 'cmake' / 'native_no_amx.cmake'}"
    cmake_args = (no_amx, *cmake_args, *os.environ.get("CMAKE_ARGS", "").split())
    commit = (ROOT / "LLAMA_CPP_COMMIT").read_text().strip()
    key = " ".join((commit, *cmake_args))
    bindir = build / "bin"
    stamp = build / "commit.txt"
    if stamp.is_file() and stamp.read_text().strip() == key and all(
            (bindir / t).exists() for t in tools):
        return bindir
    launcher = []
    if shutil.which("ccache"):
        launcher = ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    subprocess.run([
        "cmake", "-S", str(VENDOR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
        *launcher, *cmake_args,
    ], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j", str(jobs), "--target", *tools],
                   check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(key + "\n")
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
        if name in REAL:
            from cortex_llama import registry

            out[name] = registry.pull(REAL[name])
        elif name == "1b":
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
NGL = 0  # layers offloaded to the GPU (--gpu-layers), the same on every side


def native_bench(bindir: Path, model: Path, threads: int, n_prompt: int, n_gen: int) -> float:
    """tokens/s of one llama-bench repetition."""
    out = subprocess.run([str(bindir / "llama-bench"), "-m", str(model), "-t", str(threads),
                          *(["-ngl", str(NGL)] if NGL else []),
                          "-p", str(n_prompt), "-n", str(n_gen), "-r", "1", "-b", "2048",
                          "-ub", "512", "-fa", "0", "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def native_batched(bindir: Path, model: Path, threads: int, npl: int, pp: int, tg: int) -> float:
    """Generation tokens/s of llama-batched-bench for ``npl`` parallel sequences."""
    cmd = [str(bindir / "llama-batched-bench"), "-m", str(model), "-t", str(threads),
           *(["-ngl", str(NGL)] if NGL else []),
           "-c", str(npl * (pp + tg) + 512), "-b", "2048", "-ub", "512", "-fa", "off",
           "-kvu", "-npp", str(pp), "-ntg", str(tg), "-npl", str(npl), "--output-format", "jsonl"]
    # Its asynchronous log sometimes exits before printing the result line, to
    # whichever stream it shares: merge them, and run again when the line is missing.
    for _ in range(8):
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if rows:
            return float(rows[-1]["speed_tg"])
    raise RuntimeError(f"llama-batched-bench printed no result: {' '.join(cmd)}")


class Ours:
    """The object layer driven the way llama-bench drives llama.cpp."""

    def __init__(self, model_path: Path, threads: int) -> None:
        from cortex_llama import Model

        self.model = Model(model_path, n_gpu_layers=NGL)
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
                ctx.decode_one(tok, pos)
                tok = chain.sample(ctx) if sample else toks[pos]
            return n / (time.perf_counter() - t0)

    def batched(self, npl: int, pp: int, tg: int) -> float:
        """Generation tokens/s for ``npl`` sequences, one decode per step."""
        with self._ctx(npl * (pp + tg) + 512, n_seq=npl) as ctx:
            b = ctx.new_batch(2048)
            for s in range(npl):  # prompts in batches of n_batch, as llama-batched-bench does
                if b.n_tokens + pp > b.capacity:
                    ctx.decode(b)
                    b.clear()
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


class High:
    """The high-level LLM API on the same model and settings."""

    def __init__(self, model_path: Path, threads: int, n_seq: int = 32) -> None:
        from cortex_llama import LLM

        t0 = time.perf_counter()
        self.llm = LLM(model_path, context_size=8192 + 512, batch_size=2048, ubatch_size=512,
                       threads=threads, n_seq_max=n_seq, flash_attn=False, kv_unified=True, gpu_layers=NGL)
        self.load_s = time.perf_counter() - t0
        self.n_vocab = self.llm.model.n_vocab
        vocab = self.llm.model.vocab
        # ban every end-of-generation token, so each run generates exactly n tokens
        self.no_eos = {t: float("-inf") for t in range(self.n_vocab) if vocab.is_eog(t)} or None
        self.rng = np.random.default_rng(1)

    def _prompt(self, n: int) -> list[int]:
        # random ids above the special tokens: never a prefix of the cached prompt
        return self.rng.integers(300, self.n_vocab, n).tolist()

    def pp(self, n: int) -> float:
        # max_tokens=1: a request for no tokens does not evaluate its prompt
        c = self.llm.complete(self._prompt(n), temperature=0, max_tokens=1)
        return n / (c.timings.prompt_ms / 1000)

    def pp_wall(self, n: int) -> float:
        """Wall-clock prompt processing as llama-cpp-python's row measures it: a
        completion of one token after an ``n``-token prompt."""
        prompt = self._prompt(n)
        t0 = time.perf_counter()
        self.llm.complete(prompt, temperature=0, max_tokens=1)
        return n / (time.perf_counter() - t0)

    def tg_text(self, n: int, stream: bool) -> float:
        """Greedy continuation of TEXT_PROMPT, wall clock, as llama-cpp-python's row."""
        t0 = time.perf_counter()
        if stream:
            count = sum(1 for _ in self.llm.stream(TEXT_PROMPT, temperature=0, max_tokens=n))
            del count
        else:
            c = self.llm.complete(TEXT_PROMPT, temperature=0, max_tokens=n)
            assert len(c.tokens) == n, (len(c.tokens), c.finish_reason)
        return n / (time.perf_counter() - t0)

    def tg_stream(self, n: int) -> float:
        t0 = time.perf_counter()
        count = sum(1 for _ in self.llm.stream(self._prompt(1), temperature=0, max_tokens=n,
                                               logit_bias=self.no_eos))
        del count
        return n / (time.perf_counter() - t0)

    def tg_complete(self, n: int) -> float:
        c = self.llm.complete(self._prompt(1), temperature=0, max_tokens=n, logit_bias=self.no_eos)
        assert len(c.tokens) == n
        return n / (c.timings.generation_ms / 1000)

    def generate(self, npl: int, pp: int, tg: int) -> float:
        res = self.llm.generate([self._prompt(pp) for _ in range(npl)], temperature=0, max_tokens=tg,
                                logit_bias=self.no_eos)
        return npl * tg / (res[0].timings.generation_ms / 1000)

    def embed_tps(self, n_texts: int = 64) -> float:
        words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
        texts = [" ".join(words[(i + k) % 8] for k in range(12)) for i in range(n_texts)]
        self.llm.embed(texts[:4])
        t0 = time.perf_counter()
        self.llm.embed(texts)
        return n_texts / (time.perf_counter() - t0)

    def close(self) -> None:
        self.llm.unload()


class Lcp:
    """llama-cpp-python 0.3.36's high-level API in its own venv (bench/lcp_worker.py),
    loading the package's own libllama through LLAMA_CPP_LIB_PATH."""

    def __init__(self, python: Path, model_path: Path, threads: int) -> None:
        import cortex_llama

        env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(cortex_llama._lib.lib_dir)}
        self.proc = subprocess.Popen([str(python), str(HERE / "lcp_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        info = self._ask(cmd="load", model=str(model_path), threads=threads, n_ctx=1024, gpu_layers=NGL)
        self.load_s, self.version = info["load_s"], info["version"]

    def _ask(self, **cmd) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama-cpp-python worker exited ({self.proc.wait()})")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def pp(self, n: int) -> float:
        return float(self._ask(cmd="pp", n=n)["tps"])

    def tg(self, n: int, stream: bool) -> float:
        out = self._ask(cmd="tg", n=n, prompt=TEXT_PROMPT, stream=stream)
        if not stream:
            assert out["tokens"] == n, out
        return float(out["tps"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def in_thread(fn):
    """``fn()`` in a new thread that ends with it (and takes its OpenMP team along)."""
    out: list = []

    def body() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:  # re-raised in the caller
            out.append((False, exc))

    th = threading.Thread(target=body)
    th.start()
    th.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


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
    ap.add_argument("--models", nargs="+", default=["tiny", "small"],
                    choices=["tiny", "small", "1b", *REAL],
                    help="test models, or smollm2 (SmolLM2-135M-Instruct from the model registry)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batched", nargs="*", type=int, default=[8, 32])
    ap.add_argument("--gpu-layers", type=int, default=0,
                    help="offload this many layers on every side (-1: all); build with "
                         "CMAKE_ARGS=-DGGML_CUDA=on for the GPU variant")
    ap.add_argument("--out", default="latest", help="name of the result files in bench/results/")
    ap.add_argument("--lcp-python", default=str(LCP_PYTHON),
                    help="python of a venv with llama-cpp-python 0.3.36 (see bench/README.md): adds "
                         "its rows for the real models; 'none' skips them")
    args = ap.parse_args()
    global NGL
    NGL = args.gpu_layers

    bindir = build_native(args.threads)
    paths = make_models(args.models)
    rows: list[dict] = []
    extras: dict[str, dict] = {}

    def record(name: str, test: str, layer: str, n: float, o: float) -> None:
        rows.append({"model": name, "test": test, "layer": layer, "native_tps": n, "ours_tps": o,
                     "ratio": o / n,
                     "overhead_us_per_token": (1 / o - 1 / n) * 1e6 if test.startswith("tg") else None})
        print(f"{name:6} {test:14} {layer:14} native {n:10.1f} t/s   ours {o:10.1f} t/s   "
              f"ratio {o / n:.3f}", flush=True)

    for name, path in paths.items():
        t = args.threads
        nat_pp = lambda: native_bench(bindir, path, t, 512, 0)  # noqa: E731
        nat_tg = lambda: native_bench(bindir, path, t, 0, 128)  # noqa: E731
        batched = [(npl, 128, 32 if name == "1b" else 128) for npl in args.batched]
        reps_b = max(3, args.reps // 2)
        # One decoding thread at a time: libggml's OpenMP keeps a thread team per thread
        # that decodes, and once two teams outnumber the cores every team spins less and
        # sleeps more (about 0.6x here). So the object layer runs first, each call in a
        # thread of its own that ends with it, and the LLM (whose engine thread decodes)
        # is loaded only after.
        ours = Ours(path, t)
        for test, layer, nat, our in [
            ("pp512", "objects", nat_pp, lambda: ours.pp(512)),
            ("tg128", "objects", nat_tg, lambda: ours.tg(128)),
            ("tg128", "objects+greedy", nat_tg, lambda: ours.tg(128, sample=True)),
        ]:
            record(name, test, layer, *interleaved(args.reps, nat, lambda: in_thread(our)))
        for npl, pp, tg in batched:
            nat = lambda: native_batched(bindir, path, t, npl, pp, tg)  # noqa: E731
            record(name, f"batched x{npl}", "objects",
                   *interleaved(reps_b, nat, lambda: in_thread(lambda: ours.batched(npl, pp, tg))))
        n_params = ours.model.n_params
        ours.close()

        high = High(path, t, n_seq=max(args.batched + [1]))
        lcp = None
        if name in REAL and args.lcp_python != "none" and Path(args.lcp_python).exists():
            lcp = Lcp(Path(args.lcp_python), path, t)  # its own process
            extras.setdefault(name, {}).update({"lcp_load_s": lcp.load_s, "lcp_version": lcp.version})
        high_rows = [
            ("pp512", "LLM.complete", nat_pp, lambda: high.pp(512)),
            ("tg128", "LLM.complete", nat_tg, lambda: high.tg_complete(128)),
            ("tg128", "LLM.stream", nat_tg, lambda: high.tg_stream(128)),
        ]
        if name in REAL:
            # wall clock through each high-level API, the same prompts on both
            high_rows += [("pp512 wall", "LLM.complete", nat_pp, lambda: high.pp_wall(512)),
                          ("tg128 text", "LLM.complete", nat_tg, lambda: high.tg_text(128, False)),
                          ("tg128 text", "LLM.stream", nat_tg, lambda: high.tg_text(128, True))]
        if lcp is not None:
            high_rows += [("pp512 wall", "llama-cpp-python", nat_pp, lambda: lcp.pp(512)),
                          ("tg128 text", "llama-cpp-python", nat_tg, lambda: lcp.tg(128, False)),
                          ("tg128 text", "llama-cpp-python stream", nat_tg, lambda: lcp.tg(128, True))]
        for test, layer, nat, our in high_rows:
            record(name, test, layer, *interleaved(args.reps, nat, our))
        for npl, pp, tg in batched:
            nat = lambda: native_batched(bindir, path, t, npl, pp, tg)  # noqa: E731
            record(name, f"batched x{npl}", "LLM.generate",
                   *interleaved(reps_b, nat, lambda: high.generate(npl, pp, tg)))
        extras.setdefault(name, {}).update({"load_s": high.load_s, "embed_texts_per_s": high.embed_tps(),
                                            "file_mib": path.stat().st_size / 2**20, "n_params": n_params})
        print(f"{name:6} load {high.load_s * 1000:.1f} ms, embeddings {extras[name]['embed_texts_per_s']:.1f} "
              "texts/s", flush=True)
        high.close()
        if lcp is not None:
            lcp.close()

    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": machine(), "threads": args.threads, "reps": args.reps, "gpu_layers": NGL,
            "commit": (ROOT / "LLAMA_CPP_COMMIT").read_text().strip(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows, "models": extras},
                                                    indent=2))
    lines = [f"Machine: {meta['machine']}; {args.threads} threads; median of {args.reps} interleaved "
             f"runs; llama.cpp {meta['commit'][:10]}; {meta['date']}", "",
             "| model | test | cortex-llama layer | native t/s | cortex-llama t/s | ratio | "
             "overhead µs/token |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ov = "" if r["overhead_us_per_token"] is None else f"{r['overhead_us_per_token']:.1f}"
        lines.append(f"| {r['model']} | {r['test']} | {r['layer']} | {r['native_tps']:.1f} | "
                     f"{r['ours_tps']:.1f} | {r['ratio']:.3f} | {ov} |")
    lines += ["", "| model | file MiB | parameters | load (LLM) ms | embeddings texts/s |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, e in extras.items():
        lines.append(f"| {name} | {e['file_mib']:.1f} | {e['n_params']:,} | {e['load_s'] * 1000:.1f} | "
                     f"{e['embed_texts_per_s']:.1f} |")
    for name, e in extras.items():
        if "lcp_version" in e:
            lines += ["", f"llama-cpp-python {e['lcp_version']} ({name}): its high-level `Llama` API on the "
                      f"package's own libllama (LLAMA_CPP_LIB_PATH), load {e['lcp_load_s'] * 1000:.1f} ms. "
                      "`pp512 wall`: one completion of 1 token after 512 random prompt tokens, wall clock; "
                      f"`tg128 text`: greedy 128 tokens after {TEXT_PROMPT!r}, wall clock; both against "
                      "llama-bench's pp512/tg128. It has no batched generation in its high-level API."]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    plot(rows, extras, RESULTS / f"{args.out}.png")
    print("\n".join(lines))
    return 0


def plot(rows: list[dict], extras: dict[str, dict], out: Path) -> None:
    """tokens/s against model size and against batch size (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for test, layer in [("pp512", "objects"), ("tg128", "objects"), ("tg128", "LLM.stream")]:
        pts = [(extras[r["model"]]["n_params"], r["native_tps"], r["ours_tps"]) for r in rows
               if r["test"] == test and r["layer"] == layer and r["model"] in extras]
        if not pts:
            continue
        xs, nat, our = zip(*sorted(pts))
        if layer == "objects":
            ax.plot(xs, nat, "o--", label=f"{test} native")
        ax.plot(xs, our, "s-", label=f"{test} cortex-llama ({layer})")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="tokens/s", title="speed vs model size")
    ax.legend(fontsize=7)
    ax = axes[1]
    for model in extras:
        pts = sorted((int(r["test"].split("x")[1]), r["native_tps"], r["ours_tps"]) for r in rows
                     if r["model"] == model and r["test"].startswith("batched") and r["layer"] == "objects")
        tg1 = [r for r in rows if r["model"] == model and r["test"] == "tg128" and r["layer"] == "objects"]
        if tg1:
            pts = [(1, tg1[0]["native_tps"], tg1[0]["ours_tps"])] + pts
        if pts:
            xs, nat, our = zip(*pts)
            ax.plot(xs, nat, "o--", label=f"{model} native")
            ax.plot(xs, our, "s-", label=f"{model} cortex-llama")
    ax.set(xscale="log", yscale="log", xlabel="parallel sequences", ylabel="generated tokens/s",
           title="generation speed vs batch size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
