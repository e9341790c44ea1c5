"""The ``cortex-llama`` command line: info, make-test-model, generate, demo."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def cmd_info(args: argparse.Namespace) -> int:
    from .system import system_info

    info = system_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"cortex-llama     {info['cortex_llama']}")
    print(f"llama.cpp        {info['llama_cpp_commit']}")
    print(f"library          {info['library_dir']} (commit {info['library_commit']})")
    print(f"build options    {', '.join(info['build_options']) or '(defaults)'}")
    print(f"system           {info['system_info']}")
    print(f"backends         {', '.join(info['backends'])}")
    print("devices")
    for d in info["devices"]:
        print(f"  [{d['index']}] {d['name']:<10} {d['type']:<5} {d['description']} "
              f"(free {_fmt_bytes(d['memory_free'])} / total {_fmt_bytes(d['memory_total'])})")
    sup = info["supports"]
    print("supports         " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sup.items()))
    return 0


def cmd_make_test_model(args: argparse.Namespace) -> int:
    from .testmodel import make_test_model

    t0 = time.perf_counter()
    path = make_test_model(args.out, args.preset, seed=args.seed)
    print(f"wrote {path} ({_fmt_bytes(path.stat().st_size)}, preset {args.preset}, "
          f"{time.perf_counter() - t0:.2f} s)")
    return 0


def _greedy(model_path: Path, prompt: str, n_predict: int, threads: int) -> tuple[str, float]:
    """Greedy generation with the object layer; returns (text, tokens/s)."""
    from . import Context, Model, SamplerChain, Sampler

    with Model(model_path) as model:
        with Context(model, n_ctx=max(256, n_predict + 64), n_threads=threads) as ctx:
            tokens = model.tokenize(prompt)
            batch = ctx.new_batch()
            batch.add_many(tokens, 0)
            ctx.decode(batch)
            chain = SamplerChain([Sampler.greedy()])
            detok = model.vocab.detokenizer()
            out = []
            pos = len(tokens)
            t0 = time.perf_counter()
            for _ in range(n_predict):
                tok = chain.sample(ctx)
                if model.vocab.is_eog(tok):
                    break
                out.append(detok.feed(tok))
                batch.clear()
                batch.add(tok, pos, 0, logits=True)
                pos += 1
                ctx.decode(batch)
            dt = time.perf_counter() - t0
            out.append(detok.flush())
            return "".join(out), (len(out) - 1) / dt if dt > 0 else 0.0


def cmd_generate(args: argparse.Namespace) -> int:
    text, tps = _greedy(Path(args.model), args.prompt, args.n_predict, args.threads)
    print(text)
    print(f"[{tps:.1f} tokens/s]", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .testmodel import make_test_model

    with tempfile.TemporaryDirectory(prefix="cortex-llama-demo-") as tmp:
        path = make_test_model(Path(tmp) / "tiny.gguf", args.preset)
        print(f"made a random-weight test model: {path.name} (preset {args.preset})\n")
        cmd_info(argparse.Namespace(json=False))
        print("\ngreedy generation (random weights: the text is noise, the code path is real):")
        text, tps = _greedy(path, "Hello, world", 32, args.threads)
        print(repr(text))
        print(f"{tps:.0f} tokens/s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortex-llama", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="version, llama.cpp commit, backends and devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-test-model", help="write a random-weight llama GGUF model")
    p.add_argument("out", help="output .gguf path")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "1b"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_test_model)

    p = sub.add_parser("generate", help="greedy generation from a prompt (object layer)")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("-n", "--n-predict", type=int, default=64)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="make a test model, print info, generate")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    p.add_argument("-t", "--threads", type=int, default=2)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LlamaError

    try:
        return int(args.func(args))
    except LlamaError as exc:
        print(f"cortex-llama: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
