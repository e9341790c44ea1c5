"""Fuzzing the model loader: a corrupt GGUF file raises, it never kills the process.

Each case is a seeded mutation of a good model (tests/gguf_mutate.py: truncation,
flipped and zeroed metadata bytes, huge counts and lengths, bad type ids,
duplicate keys and vocabulary tokens, mismatched tokenizer arrays, tensor offsets
past the end, overflowing shapes, unknown architectures, wrong value types),
loaded in a worker process (tests/fuzz_worker.py) that decodes a few tokens
wherever the file loads. A signal or a hang fails the test naming the mutation
and its seed; so does any exception that is not a :class:`LlamaError`.

``CORTEX_LLAMA_FUZZ_SEEDS=N`` runs N seeds per mutation and model (CI: 5 on the
tiny model, 3 on a Q4_0 model, 1 on the real model when it is cached).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cortex_llama import ModelLoadError, Model, quantize

from .gguf_mutate import MUTATIONS, mutate, read, write

WORKER = Path(__file__).with_name("fuzz_worker.py")
MARK = "@@fuzz "  # the worker's protocol lines (see fuzz_worker.py)
CASE_TIMEOUT_S = 60
SEEDS = int(os.environ.get("CORTEX_LLAMA_FUZZ_SEEDS", "0"))


def run_cases(cases: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Run ``cases`` in worker processes; a dead or silent worker is restarted
    after the case it was on is recorded as a crash or a hang."""
    results: dict[int, dict[str, Any]] = {}
    pending = list(cases)
    while pending:
        with tempfile.TemporaryFile("w+") as err:
            # GGML_NO_BACKTRACE: an aborting ggml would otherwise run gdb on itself
            proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "GGML_NO_BACKTRACE": "1"})
            assert proc.stdin is not None and proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()

            def feed(stdin: Any = proc.stdin, todo: list[dict[str, Any]] = list(pending)) -> None:
                try:
                    for c in todo:
                        stdin.write(json.dumps(c) + "\n")
                    stdin.close()
                except OSError:
                    pass  # the worker died; the reader sees it

            def read_lines(stdout: Any = proc.stdout) -> None:
                for line in stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=feed, daemon=True).start()
            threading.Thread(target=read_lines, daemon=True).start()
            current: int | None = None
            while True:
                try:
                    line = lines.get(timeout=CASE_TIMEOUT_S)
                except queue.Empty:
                    proc.kill()
                    proc.wait()
                    assert current is not None
                    results[current] = {"outcome": "hang"}
                    break
                if line is None:
                    proc.wait()
                    if current is not None:
                        err.seek(0)
                        rc = proc.returncode
                        why = signal.Signals(-rc).name if rc < 0 else f"exit code {rc}"
                        results[current] = {"outcome": "crash", "signal": why, "stderr": err.read()[-1500:]}
                    break
                if not line.startswith(MARK):
                    continue
                msg = json.loads(line[len(MARK):])
                if "start" in msg:
                    current = msg["start"]
                else:
                    results[msg["id"]] = msg
                    current = None
            pending = [c for c in pending if c["id"] not in results]
    return results


def make_cases(sources: list[tuple[Path, int]], tmp: Path) -> list[dict[str, Any]]:
    cases = []
    for source, n_seeds in sources:
        for name in MUTATIONS:
            for seed in range(n_seeds):
                cases.append({"id": len(cases), "source": str(source), "mutation": name, "seed": seed,
                              "tmp": str(tmp)})
    return cases


def check(cases: list[dict[str, Any]], results: dict[int, dict[str, Any]]) -> Counter[str]:
    bad = []
    for c in cases:
        r = results[c["id"]]
        if r["outcome"] in ("crash", "hang", "unexpected"):
            bad.append(f"{Path(c['source']).name} {c['mutation']} seed={c['seed']}: {r['outcome']} "
                       f"{r.get('signal', '')} {r.get('type', '')} {r.get('message', '')} {r.get('stderr', '')}")
    assert not bad, f"{len(bad)} of {len(cases)} cases failed:\n" + "\n".join(bad)
    return Counter(results[c["id"]]["outcome"] for c in cases)


@pytest.fixture(scope="module")
def small_q4(small_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize(small_path, tmp_path_factory.mktemp("fuzz") / "small-q4_0.gguf", "Q4_0")


def test_loader_survives_corrupt_files(tiny_path: Path, small_q4: Path, tmp_path: Path) -> None:
    sources = [(tiny_path, SEEDS or 5), (small_q4, SEEDS or 3)]
    from cortex_llama import registry

    real = registry.cached("smollm2-135m-instruct")
    if real is not None:
        sources.append((real, SEEDS or 1))
    cases = make_cases(sources, tmp_path)
    counts = check(cases, run_cases(cases))
    print(f"\nfuzz: {len(cases)} cases on {[p.name for p, _ in sources]}: {dict(counts)}")
    assert counts["error"] > 0 and counts["loaded"] > 0


def test_duplicate_vocab_token_raises(tiny_path: Path, tmp_path: Path) -> None:
    """The abort found by fuzzing (GGML_ASSERT in the vocabulary loader) is a
    ModelLoadError naming the token and both indices (patches/0001)."""
    g = read(tiny_path.read_bytes())
    toks = g.kv("tokenizer.ggml.tokens")
    assert toks is not None
    toks.value[300] = toks.value[299]
    bad = tmp_path / "dup.gguf"
    bad.write_bytes(write(g))
    with pytest.raises(ModelLoadError, match="duplicate token") as info:
        Model(bad)
    assert repr(toks.value[299])[1:-1] in str(info.value) or toks.value[299] in str(info.value)
    assert "299" in str(info.value) and "300" in str(info.value)


def test_mutations_are_reproducible(tiny_path: Path) -> None:
    buf = tiny_path.read_bytes()
    assert write(read(buf)) == buf  # the writer lays out the file the reader read
    for name in MUTATIONS:
        assert mutate(buf, name, 7) == mutate(buf, name, 7), name
