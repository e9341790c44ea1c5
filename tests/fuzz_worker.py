"""The loader fuzz test's worker process (see test_model_fuzz.py).

Reads cases as JSON lines on stdin: ``{"source": path, "mutation": name, "seed": n,
"tmp": dir}``. For each it writes the mutated copy, announces it on stdout
(a ``start`` line), loads it with :class:`Model` and, where it loads, decodes a few
tokens, then prints the outcome as one JSON line. A signal kills only this
process; the parent knows which case was running from the last ``START``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf_mutate import mutate  # noqa: E402

from cortex_llama import Context, LlamaError, Model  # noqa: E402

MARK = "@@fuzz "  # protocol lines; anything else on stdout (a dying ggml's backtrace) is noise


def decode_a_few(model: Model) -> list[int]:
    with Context(model, n_ctx=64, n_batch=16, n_threads=1) as ctx:
        n = model.n_vocab
        prompt = [i % n for i in (1, 5, 9, 13)]
        batch = ctx.new_batch()
        batch.add_many(prompt, 0, 0)
        ctx.decode(batch)
        out = []
        row = len(prompt) - 1
        for step in range(3):
            logits = ctx.logits(row)
            tok = int(np.argmax(logits))
            out.append(tok)
            batch.clear()
            batch.add(tok, len(prompt) + step, 0, logits=True)
            row = 0
            ctx.decode(batch)
        return out


def run_case(case: dict[str, object]) -> dict[str, object]:
    source = Path(str(case["source"]))
    data = mutate(source.read_bytes(), str(case["mutation"]), int(case["seed"]))  # type: ignore[call-overload]
    if data is None:
        return {"outcome": "skipped"}
    path = Path(str(case["tmp"])) / f"case-{os.getpid()}.gguf"
    path.write_bytes(data)
    try:
        with Model(path) as model:
            tokens = decode_a_few(model)
        return {"outcome": "loaded", "tokens": tokens}
    except LlamaError as exc:
        return {"outcome": "error", "type": type(exc).__name__, "message": str(exc)[:500]}
    except Exception as exc:  # noqa: BLE001 - anything but LlamaError is a finding
        return {"outcome": "unexpected", "type": type(exc).__name__,
                "message": "".join(traceback.format_exception(exc))[-1500:]}
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    for line in sys.stdin:
        case = json.loads(line)
        print(MARK + json.dumps({"start": case["id"]}), flush=True)
        result = run_case(case)
        result["id"] = case["id"]
        print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
