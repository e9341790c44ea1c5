#!/usr/bin/env python3
"""Time to encode and prefill one image: cortex-llama against native llama-mtmd-cli.

Both run on the same synthetic files: a text model from the package's test-model
maker and a random-weight LLaVA-style projector (``--image-size``/``--patch-size``
set how many embeddings an image gives), and the same PNG image. Native numbers
are llama-mtmd-cli's own log lines (with -v) ("mtmd batch encoding done in N ms", "image
decoded (batch i/n) in N ms"), one process per repetition; ours time
``Projector.encode`` and ``Projector.eval_chunk`` (encode + decode of the
embeddings; prefill = the difference) in one process, after two untimed runs;
the two sides alternate. Both warm the encoder up at load (libmtmd's warmup).

    python bench/multimodal.py                       # small text model, 224 px / 14 px patches
    python bench/multimodal.py --preset tiny --image-size 64 --patch-size 8 --reps 5

llama-mtmd-cli is looked up in bench/.build-mtmd/bin (cmake on vendor/llama.cpp
with -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON, target llama-mtmd-cli) or
$CORTEX_LLAMA_MTMD_CLI; without it only our numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = HERE / ".models"
CLI = Path(os.environ.get("CORTEX_LLAMA_MTMD_CLI", HERE / ".build-mtmd" / "bin" / "llama-mtmd-cli"))


def png_bytes(rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def native_once(model: Path, mmproj: Path, image: Path, threads: int) -> tuple[float, float]:
    """(encode ms, prefill ms) from one llama-mtmd-cli run's own log."""
    out = subprocess.run([str(CLI), "-m", str(model), "--mmproj", str(mmproj), "--image", str(image),
                          "-p", "Describe.", "-n", "1", "--temp", "0", "-t", str(threads),
                          "-c", "4096", "-v"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"llama-mtmd-cli failed:\n{out.stderr[-2000:]}")
    e = re.findall(r"mtmd batch encoding done in (\d+) ms", out.stderr)
    d = re.findall(r"image decoded \(batch \d+/\d+\) in (\d+) ms", out.stderr)
    if not e or not d:
        raise SystemExit("llama-mtmd-cli printed no encode/decode timings")
    return float(sum(map(int, e))), float(sum(map(int, d)))


class Ours:
    """Our side, loaded once: one measurement per :meth:`once`."""

    def __init__(self, model_path: Path, mmproj: Path, image: Path, threads: int) -> None:
        from cortex_llama import Context, Model
        from cortex_llama.multimodal import Projector

        self.model = Model(model_path)
        self.proj = Projector(self.model, mmproj, n_threads=threads, warmup=True)
        chunks = self.proj.tokenize("<|im_start|>user\n" + self.proj.marker + "Describe.<|im_end|>\n",
                                    [self.proj.load(image)])
        self.chunks = chunks
        self.img = next(c for c in chunks if c.is_media)
        self.ctx = Context(self.model, n_ctx=4096, n_threads=threads)
        for _ in range(2):  # untimed: graph reservation on first use
            self.once()

    def once(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        self.proj.encode(self.img)
        t1 = time.perf_counter()
        self.ctx.clear()
        self.proj.eval_chunk(self.ctx, self.img, 0, 0)  # encode + decode of the embeddings
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1 - (t1 - t0)) * 1e3


def summarize(rows: list[tuple[float, float]]) -> dict[str, float]:
    return {"encode_ms": statistics.median(r[0] for r in rows),
            "prefill_ms": statistics.median(r[1] for r in rows),
            "total_ms": statistics.median(r[0] + r[1] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "1b"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--vision-embd", type=int, default=256)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from cortex_llama.testmodel import make_test_model, make_test_projector

    MODELS.mkdir(parents=True, exist_ok=True)
    model = MODELS / f"{args.preset}-f16.gguf"
    if not model.exists():
        make_test_model(model, args.preset, dtype="f16")
    tag = f"{args.preset}-{args.image_size}-{args.patch_size}-{args.vision_embd}-{args.vision_layers}"
    mmproj = MODELS / f"mmproj-{tag}.gguf"
    if not mmproj.exists():
        make_test_projector(mmproj, args.preset, image_size=args.image_size, patch_size=args.patch_size,
                            n_embd=args.vision_embd, n_head=4, n_ff=args.vision_embd * 4,
                            n_layer=args.vision_layers, proj_hidden=args.vision_embd * 2, dtype="f16")
    image = MODELS / "bench-image.png"
    image.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)))

    ours = Ours(model, mmproj, image, args.threads)
    mine: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    for _ in range(args.reps):  # interleaved: native, ours, native, ours, ...
        if CLI.is_file():
            theirs.append(native_once(model, mmproj, image, args.threads))
        mine.append(ours.once())
    result = {"setup": vars(args), "ours": summarize(mine) | {"n_image_tokens": float(ours.img.n_tokens)},
              "native": summarize(theirs) if theirs else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    o, n = result["ours"], result["native"]
    print(f"{args.preset} text model, {args.image_size} px / {args.patch_size} px patches "
          f"({int(o['n_image_tokens'])} image tokens), {args.threads} threads, median of {args.reps}")
    print(f"{'':10} {'encode ms':>10} {'prefill ms':>11} {'total ms':>9}")
    for name, r in (("cortex", o), ("native", n)):
        if r is None:
            print(f"{name:10} (no llama-mtmd-cli at {CLI})")
            continue
        print(f"{name:10} {r['encode_ms']:10.1f} {r['prefill_ms']:11.1f} {r['total_ms']:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
