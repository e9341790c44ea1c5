"""llama-cpp-python's side of bench/run.py, run in its own venv (bench/.venv-lcp).

Reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"cmd": "load", "model": PATH, "threads": T, "n_ctx": N, "gpu_layers": G}
    {"cmd": "pp", "n": 512}                          -> {"tps": ...}
    {"cmd": "tg", "n": 128, "prompt": "...", "stream": true}  -> {"tps": ..., "tokens": ...}

Only llama-cpp-python's high-level API (``llama_cpp.Llama``) is used, with the
settings bench/run.py gives every other side: the same threads, batch 2048,
micro-batch 512, flash attention off, greedy sampling.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> int:
    import llama_cpp

    llm = None
    rng = np.random.default_rng(2)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "load":
            t0 = time.perf_counter()
            llm = llama_cpp.Llama(cmd["model"], n_ctx=cmd["n_ctx"], n_batch=2048, n_ubatch=512,
                                  n_threads=cmd["threads"], n_threads_batch=cmd["threads"],
                                  n_gpu_layers=cmd.get("gpu_layers", 0), flash_attn=False,
                                  verbose=False)
            out = {"load_s": time.perf_counter() - t0, "version": llama_cpp.__version__}
        elif cmd["cmd"] == "pp":
            assert llm is not None
            n = cmd["n"]
            # random ids above the special tokens: never a prefix of the cached prompt
            toks = rng.integers(300, llm.n_vocab(), n).tolist()
            t0 = time.perf_counter()
            llm.create_completion(toks, max_tokens=1, temperature=0)
            out = {"tps": n / (time.perf_counter() - t0)}
        elif cmd["cmd"] == "tg":
            assert llm is not None
            n = cmd["n"]
            t0 = time.perf_counter()
            if cmd["stream"]:
                count = 0
                for chunk in llm.create_completion(cmd["prompt"], max_tokens=n, temperature=0,
                                                   stream=True):
                    count += 1
                tokens = count
            else:
                res = llm.create_completion(cmd["prompt"], max_tokens=n, temperature=0)
                tokens = res["usage"]["completion_tokens"]
            out = {"tps": tokens / (time.perf_counter() - t0), "tokens": tokens}
        else:
            out = {"error": f"unknown command {cmd['cmd']!r}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
