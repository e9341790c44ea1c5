"""Run in a subprocess by test_quant_matrix.py: decode one model file with the
CPU backend's extra buffer types (weight repacking) off and on, print JSON.

A crash here (SIGILL, SIGSEGV, SIGABRT) ends only this process; the test names
the signal. Usage: ``python quant_probe.py MODEL.gguf``.

Off runs greedy from a fixed prompt; on is fed the same tokens (teacher forcing),
so the logits of both can be compared step by step even where a near-tie makes
the two greedy paths part.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from cortex_llama import Context, Model

PROMPT_LEN = 24
N_GEN = 16


def run(path: str, extra_bufts: bool, forced: list[int] | None) -> tuple[list[int], np.ndarray]:
    """Greedy tokens (or ``forced`` ones) and the logits (N_GEN, n_vocab) they came from."""
    with Model(path, use_extra_bufts=extra_bufts) as model, \
            Context(model, n_ctx=256, n_batch=64, n_threads=2) as ctx:
        vocab = model.n_vocab
        prompt = [1] + [(i * 37) % (vocab - 300) + 260 for i in range(PROMPT_LEN - 1)]
        batch = ctx.new_batch()
        batch.add_many(prompt, 0, 0)
        ctx.decode(batch)
        rows = np.empty((N_GEN, vocab), dtype=np.float32)
        tokens: list[int] = []
        row = len(prompt) - 1
        for step in range(N_GEN):
            rows[step] = ctx.logits(row)
            tok = forced[step] if forced is not None else int(np.argmax(rows[step]))
            tokens.append(tok)
            batch.clear()
            batch.add(tok, len(prompt) + step, 0, logits=True)
            row = 0
            ctx.decode(batch)
        return tokens, rows


def main() -> None:
    path = sys.argv[1]
    ref_tokens, off = run(path, False, None)
    _, on = run(path, True, ref_tokens)
    on_argmax = on.argmax(axis=1)
    # where repacked kernels would pick another token: how close was it to a tie?
    parted = [{"step": int(i), "gap": float(on[i, on_argmax[i]] - on[i, ref_tokens[i]])}
              for i in np.nonzero(on_argmax != np.array(ref_tokens))[0]]
    print(json.dumps({
        "tokens": ref_tokens,
        "finite": bool(np.isfinite(off).all() and np.isfinite(on).all()),
        "max_abs_diff": float(np.abs(on - off).max()),
        "logit_range": float(off.max() - off.min()),
        "parted": parted,
    }))


if __name__ == "__main__":
    main()
