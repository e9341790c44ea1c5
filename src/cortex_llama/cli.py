"""The ``cortex-llama`` command line.

Commands: info, make-test-model, run, chat, embed, tokenize, demo, pull, models, rpc-server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _progress() -> Callable[[float], None] | None:
    """A load progress bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(fraction: float) -> None:
        width = 30
        done = int(fraction * width)
        sys.stderr.write(f"\rloading [{'#' * done}{'.' * (width - done)}] {fraction * 100:5.1f}%")
        if fraction >= 1.0:
            sys.stderr.write("\r" + " " * (width + 20) + "\r")
        sys.stderr.flush()

    return show


def _llm(args: argparse.Namespace) -> Any:
    from .llm import LLM

    rpc_servers = [s for s in args.rpc.split(",") if s] if args.rpc else None
    return LLM(args.model, context_size=args.ctx_size, threads=args.threads, gpu_layers=args.gpu_layers,
               batch_size=args.batch_size, seed=args.seed, chat_template=args.chat_template,
               progress=_progress(), rpc_servers=rpc_servers, mmproj=getattr(args, "mmproj", None),
               **_speculative_config(args))


def _speculative_args(p: argparse.ArgumentParser) -> None:
    """llama-server's speculative-decoding flags (n-gram types and a draft model)."""
    p.add_argument("--spec-type", default=None, metavar="TYPE[,TYPE]",
                   help="speculative decoding by n-gram lookup: ngram-simple, ngram-map-k, ngram-map-k4v, "
                        "ngram-mod or ngram-cache, or draft-simple with --model-draft (comma-separated; "
                        "default: none, draft-simple when --model-draft is given)")
    p.add_argument("--draft-max", "--spec-draft-n-max", dest="draft_max", type=int, default=16,
                   help="the most tokens drafted per step (default: 16)")
    p.add_argument("--draft-min", "--spec-draft-n-min", dest="draft_min", type=int, default=0,
                   help="shorter drafts are not verified (default: 0)")
    p.add_argument("--spec-ngram-size-n", "--spec-ngram-simple-size-n", dest="spec_ngram_size_n", type=int,
                   default=0, help="lookup n-gram length (default: llama.cpp's, 12)")
    p.add_argument("--spec-ngram-size-m", "--spec-ngram-simple-size-m", dest="spec_ngram_size_m", type=int,
                   default=0, help="drafted m-gram length (default: llama.cpp's, 48)")
    p.add_argument("--no-draft-adaptive", dest="draft_adaptive", action="store_false",
                   help="verify every match up to --draft-max, as llama-server does (default: draft only as "
                        "far as the measured cost of a row and the request's acceptance pay)")
    p.add_argument("-md", "--model-draft", "--spec-draft-model", dest="model_draft", default=None,
                   help="a draft model GGUF sharing the model's vocabulary (speculative type draft-simple)")
    p.add_argument("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", dest="gpu_layers_draft", type=int,
                   default=None, help="the draft model's layers on the GPU (default: as --gpu-layers)")
    p.add_argument("--draft-p-min", "--spec-draft-p-min", dest="draft_p_min", type=float, default=0.0,
                   help="a draft model's draft ends at a token it gives less probability (default: 0)")


def _speculative_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ModelConfig fields of the speculative flags (--model-draft adds
    draft-simple to --spec-type's types)."""
    spec_type = getattr(args, "spec_type", None)
    spec_type = None if spec_type == "none" else spec_type
    draft = getattr(args, "model_draft", None)
    if spec_type is None and draft is None:
        return {}
    if draft is not None and spec_type is not None and not {"draft", "draft-simple"} & set(spec_type.split(",")):
        spec_type += ",draft-simple"
    return {"speculative": spec_type, "draft_model": draft, "draft_gpu_layers": args.gpu_layers_draft,
            "draft_p_min": args.draft_p_min, "draft_max": args.draft_max, "draft_min": args.draft_min,
            "draft_adaptive": args.draft_adaptive, "ngram_size_n": args.spec_ngram_size_n,
            "ngram_size_m": args.spec_ngram_size_m}


def _media_parts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Content parts for the --image/--audio files (each read and checked when used)."""
    import base64

    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": path}}
                                   for path in args.image or ()]
    for path in args.audio or ():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append({"type": "input_audio", "input_audio": {"data": data, "format": Path(path).suffix[1:]}})
    if parts and not args.mmproj:
        raise ValueError("--image/--audio need a projector: pass --mmproj FILE")
    return parts


def _params(args: argparse.Namespace) -> Any:
    from .llm import GenerationParams

    grammar = Path(args.grammar_file).read_text() if args.grammar_file else None
    schema = json.loads(Path(args.json_schema).read_text()) if args.json_schema else None
    return GenerationParams(max_tokens=args.n_predict, temperature=args.temp, top_k=args.top_k,
                            top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                            stop=args.stop or (), seed=args.seed, grammar=grammar, json_schema=schema)


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
    print(f"patches          {', '.join(info['patches']) or '(none)'}")
    acc = info["cpu_acceleration"]
    amx = ("in use" if acc["amx_in_use"] else
           "not used: " + ("this CPU has none" if not acc["amx_cpu"] else
                           "built without it (-DCORTEX_LLAMA_AMX=ON to enable)"))
    print(f"cpu AMX          {amx}")
    print(f"weight repacking {'yes (CPU_REPACK, with use_extra_bufts=True)' if acc['repack'] else 'no'}; "
          f"extra buffer types: {', '.join(acc['extra_buffer_types']) or '(none)'}")
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


def cmd_run(args: argparse.Namespace) -> int:
    media = _media_parts(args)
    with _llm(args) as llm:
        params = _params(args)
        # with media, the prompt is one user message (as llama-mtmd-cli does)
        msgs = [{"role": "user", "content": [*media, {"type": "text", "text": args.prompt}]}]
        if args.json:
            c = llm.chat(msgs, params) if media else llm.complete(args.prompt, params)
            print(json.dumps({"text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason,
                              "usage": {"prompt_tokens": c.usage.prompt_tokens,
                                        "completion_tokens": c.usage.completion_tokens},
                              "tokens_per_second": c.tokens_per_second}))
            return 0
        t0 = time.perf_counter()
        n = 0
        pieces = (d.content for d in llm.stream_chat(msgs, params)) if media else llm.stream(args.prompt, params)
        for delta in pieces:
            sys.stdout.write(delta)
            sys.stdout.flush()
            n += 1
        sys.stdout.write("\n")
        print(f"[{time.perf_counter() - t0:.2f} s]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """A REPL: each line is a user message; ``/exit`` (or EOF) quits, ``/reset`` forgets,
    ``/image PATH`` (``/audio PATH``) attaches a file to the next message. ``--image`` and
    ``--audio`` files go with the first message."""
    media = _media_parts(args)
    with _llm(args) as llm:
        params = _params(args)
        history: list[dict[str, Any]] = []
        if args.system:
            history.append({"role": "system", "content": args.system})
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip() == "/exit":
                break
            if text.strip() == "/reset":
                history = history[:1] if args.system else []
                continue
            if text.startswith(("/image ", "/audio ")):
                kind, _, path = text.partition(" ")
                args.image, args.audio = ([path.strip()], None) if kind == "/image" else (None, [path.strip()])
                media += _media_parts(args)
                continue
            if not text.strip():
                continue
            if media:
                history.append({"role": "user", "content": [*media, {"type": "text", "text": text}]})
                media = []
            else:
                history.append({"role": "user", "content": text})
            parts = []
            for d in llm.stream_chat(history, params):
                delta = d.content
                parts.append(delta)
                sys.stdout.write(d.reasoning_content + delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(parts)})
    return 0


def _one_line_json(text: str) -> str:
    """A JSON answer on one line (llama.cpp's schema grammars allow newlines between
    tokens); text that is not JSON (cut short) as it is."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return text


def cmd_embed(args: argparse.Namespace) -> int:
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    with _llm(args) as llm:
        vecs = llm.embed(texts, pooling=args.pooling, normalize=not args.no_normalize)
        name = llm.name
    print(json.dumps({"model": name, "dim": int(vecs.shape[1]),
                      "data": [{"text": t, "embedding": [round(float(x), 6) for x in v]}
                               for t, v in zip(texts, vecs)]}))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .model import Model

    with Model(args.model, vocab_only=True) as model:
        toks = model.tokenize(args.text, add_special=not args.no_special, parse_special=args.parse_special)
        if args.json:
            pieces = [model.vocab.token_to_piece(int(t)) for t in toks]
            print(json.dumps([{"id": int(t), "piece": p.decode("utf-8", "replace"), "bytes": p.hex()}
                              for t, p in zip(toks, pieces)]))
        else:
            for t in toks:
                print(f"{int(t):>7} {model.vocab.token_to_piece(int(t))!r}")
    return 0


DEMO_MODEL = "smollm2-135m-instruct"


def _demo_model(args: argparse.Namespace, tmp: str) -> tuple[Path, bool]:
    """The real registry model when it can be had (pulled on first use), else a
    random-weight test model; the flag says which."""
    from . import registry
    from .errors import RegistryError
    from .testmodel import make_test_model

    if not args.random:
        try:
            path = registry.pull(DEMO_MODEL)
            entry = registry.entry(DEMO_MODEL)
            print(f"model: {DEMO_MODEL}: {entry.description} ({entry.license}), {path}\n")
            return path, True
        except RegistryError as exc:
            print(f"the real model {DEMO_MODEL} could not be fetched, so this demo falls back to a "
                  f"random-weight test model.\n  reason: {exc}\n")
    path = make_test_model(Path(tmp) / f"{args.preset}.gguf", args.preset)
    print(f"made a random-weight test model: {path.name} (preset {args.preset}); "
          "its text is noise, every code path is real\n")
    return path, False


def cmd_demo(args: argparse.Namespace) -> int:
    from .llm import LLM, GenerationParams

    with tempfile.TemporaryDirectory(prefix="cortex-llama-demo-") as tmp:
        path, real = _demo_model(args, tmp)
        cmd_info(argparse.Namespace(json=False))
        with LLM(path, context_size=2048, threads=args.threads, n_seq_max=4) as llm:
            greedy = GenerationParams(temperature=0, max_tokens=48 if real else 32)

            print("\n== streaming completion")
            prompt = "The capital of France is" if real else "Hello, world"
            sys.stdout.write(prompt)
            t0 = time.perf_counter()
            for delta in llm.stream(prompt, greedy, stop=["\n\n"] if real else ()):
                sys.stdout.write(delta)
                sys.stdout.flush()
            print(f"\n   [{time.perf_counter() - t0:.3f} s]")

            print("\n== chat (the model's chat template)")
            question = ("Write a Python function is_even(n) that returns True when n is even."
                        if real else "What is cortex-llama?")
            msgs = [{"role": "user", "content": question}]
            print("prompt:", repr(llm.chat_prompt(msgs)))
            if real:
                print("reply (streamed):")
                t0 = time.perf_counter()
                for d in llm.stream_chat(msgs, greedy, max_tokens=160):
                    sys.stdout.write(d.content)
                    sys.stdout.flush()
                print(f"\n   [{time.perf_counter() - t0:.3f} s]")
            else:
                print("reply: ", repr(llm.chat(msgs, greedy).text))

            print("\n== batched generation: 4 prompts, one decode per step")
            prompts = (["The capital of Italy is", "The largest planet in the solar system is",
                        "Water boils at a temperature of", "def fibonacci(n):"] if real else
                       ["Once upon a time", "The capital of", "def main():", "In 2026,"])
            t0 = time.perf_counter()
            for p, c in zip(prompts, llm.generate(prompts, greedy, max_tokens=24,
                                                  stop=["\n\n"] if real else ())):
                print(f"   {p!r:44} -> {c.text[:60]!r} ({c.finish_reason})")
            print(f"   [{time.perf_counter() - t0:.3f} s]")

            print("\n== structured output (JSON schema -> GBNF)")
            if real:
                schema: dict[str, Any] = {
                    "type": "object",
                    "properties": {
                        "country": {"type": "string", "maxLength": 30},
                        "capital": {"type": "string", "maxLength": 30},
                        "continent": {"enum": ["Africa", "Americas", "Asia", "Europe", "Oceania"]},
                        "population_millions": {"type": "number"},
                        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                      "minItems": 1, "maxItems": 3},
                    },
                    "required": ["country", "capital", "continent", "population_millions", "languages"],
                }
                print("   schema:", json.dumps(schema))
                c = llm.chat([{"role": "user", "content": "Give the facts about France as JSON."}],
                             greedy, max_tokens=120, json_schema=schema)
                print("  ", _one_line_json(c.text))
            else:
                schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                                           "color": {"enum": ["red", "green"]}},
                          "required": ["ok", "color"]}
                print("  ", llm.complete("JSON:", max_tokens=40, seed=1, json_schema=schema).text)

            print("\n== embeddings")
            texts = (["The cat sleeps on the mat.", "A kitten is napping on the rug.",
                      "Interest rates rose again this quarter."] if real else
                     ["first text", "second text", "third"])
            vecs = llm.embed(texts)
            print(f"   shape {vecs.shape}")
            for i, j in ((0, 1), (0, 2), (1, 2)):
                print(f"   cosine({texts[i]!r}, {texts[j]!r}) = {float(vecs[i] @ vecs[j]):.3f}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from . import registry

    for name in args.name:
        path = registry.pull(name, force=args.force)
        print(path)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import registry

    rows: list[dict[str, Any]] = []
    for e in registry.MODELS.values():
        try:
            path = registry.cached(e.name)
            state = "cached" if path else "not cached"
        except registry.RegistryError as exc:
            path, state = None, f"bad file in the cache ({exc})"
        rows.append({"name": e.name, "cached": path is not None, "path": str(path or
                     registry.cache_dir() / e.filename), "size": e.size, "sha256": e.sha256,
                     "source": e.pip_spec, "license": e.license, "description": e.description,
                     "state": state})
    if args.json:
        print(json.dumps({"cache_dir": str(registry.cache_dir()), "models": rows}, indent=2))
        return 0
    print(f"model cache: {registry.cache_dir()} (set CORTEX_LLAMA_MODELS to move it)")
    for r in rows:
        print(f"  {r['name']:<24} {_fmt_bytes(r['size']):>9}  {r['state']:<10}  {r['description']} "
              f"[{r['license']}, from {r['source']}]")
    return 0


def cmd_rpc_server(args: argparse.Namespace) -> int:
    from . import rpc

    if not rpc.is_loopback(args.host):
        print(f"cortex-llama: WARNING: listening on {args.host}, not loopback. The RPC protocol "
              "has no authentication or encryption: anyone who reaches this port can use this "
              "machine's devices and memory. Expose it on trusted networks only.", file=sys.stderr)
    devices = [d for d in args.device.split(",") if d] if args.device else None
    rpc.serve(args.host, args.port, devices=devices, threads=args.threads, cache_dir=args.cache_dir)
    return 0


SERVE_SLOT_CONTEXT = 4096  # cells per slot when -c is not given


def _slot_context(args: argparse.Namespace) -> int:
    """The context of one request from serve's ``-c`` (llama-server's meaning: the
    KV cells in all, split over the slots unless unified). Raises ``ValueError``
    when a slot would get no cells."""
    total = args.ctx_size
    if total is None:
        return SERVE_SLOT_CONTEXT
    if total == 0:
        from .model import Model

        with Model(args.model, vocab_only=True) as m:  # hyperparameters are not loaded: read the GGUF key
            total = int(m.meta(f"{m.meta('general.architecture')}.context_length") or 0)
    if total < 0:
        raise ValueError(f"-c/--ctx-size must be >= 0, got {total}")
    per_slot = total if args.kv_unified else total // max(1, args.parallel)
    if per_slot < 1:
        raise ValueError(f"-c {total} over {args.parallel} slots leaves no KV cell per slot")
    return per_slot


def cmd_serve(args: argparse.Namespace) -> int:
    """The OpenAI-compatible HTTP server (needs the ``server`` extra)."""
    try:
        from .server import serve
    except ImportError as exc:
        print(f"cortex-llama: error: the server needs FastAPI and uvicorn ({exc}); "
              "install them with: pip install 'cortex-llama[server]'", file=sys.stderr)
        return 1
    from .llm import LLM

    template = Path(args.chat_template_file).read_text() if args.chat_template_file else args.chat_template
    rpc_servers = [s for s in args.rpc.split(",") if s] if args.rpc else None
    settings = _serve_settings(args)
    with LLM(args.model, context_size=_slot_context(args), threads=args.threads, gpu_layers=args.gpu_layers,
             batch_size=args.batch_size, ubatch_size=args.ubatch_size, seed=args.seed, chat_template=template,
             n_seq_max=args.parallel, kv_unified=args.kv_unified,
             flash_attn={"on": True, "off": False, "auto": None}[args.flash_attn], embeddings=args.embeddings or args.reranking,
             pooling="rank" if args.reranking else args.pooling, lora=_lora_specs(args),
             prompt_cache_mib=None if args.cache_ram < 0 else args.cache_ram, warmup=not args.no_warmup,
             slot_prompt_similarity=args.slot_prompt_similarity,
             max_queue=args.max_queue, rpc_servers=rpc_servers,
             mmproj=args.mmproj, progress=_progress(), **_speculative_config(args)) as llm:
        serve(llm, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("CORTEX_LLAMA_API_KEY"),
              model_alias=args.model_alias, max_body_bytes=args.max_body, log_level=args.log_level,
              shutdown_timeout=args.shutdown_timeout, reasoning_format=args.reasoning_format,
              media_path=args.media_path, allowed_hosts=_list_arg(args.allowed_hosts),
              cors_origins=_list_arg(args.cors_origins), settings=settings)
    return 0


def _lora_specs(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(file, default scale) of --lora and --lora-scaled, in order (their ids).
    Raises ``ValueError`` for a scale that is not a number."""
    off = args.lora_init_without_apply
    specs = [(f, 0.0 if off else 1.0) for f in args.lora]
    for f, scale in args.lora_scaled:
        try:
            specs.append((f, 0.0 if off else float(scale)))
        except ValueError:
            raise ValueError(f"--lora-scaled {f} {scale}: the scale is not a number") from None
    return specs


def _list_arg(values: Sequence[str] | None) -> list[str]:
    """The items of a repeatable, comma-separated option."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


_SAMPLING_FLAGS = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                   "repeat_penalty": "repeat_penalty", "repeat_last_n": "penalty_last_n",
                   "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


def _serve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The server's defaults and switches from serve's llama-server flags. Raises
    ``ValueError`` for an impossible sampling default."""
    from .llm import GenerationParams
    from .server.state import name_list

    sampling = {field: getattr(args, flag) for flag, field in _SAMPLING_FLAGS.items()
                if getattr(args, flag) is not None}
    GenerationParams(**sampling)  # checks the values
    if args.slot_save_path:
        os.makedirs(args.slot_save_path, exist_ok=True)
    return {"n_predict": args.n_predict, "sampling": sampling, "slots_endpoint": args.slots,
            "metrics_endpoint": args.metrics, "slot_save_path": args.slot_save_path,
            "enable_thinking": {"on": True, "off": False, "auto": None}[args.reasoning],
            "sleep_idle_seconds": args.sleep_idle_seconds, "tags": name_list(args.tags),
            "verbose": args.verbose}


def _serve_llama_flags(p: argparse.ArgumentParser) -> None:
    """llama-server's flags for the server's defaults and endpoints."""
    p.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="tokens a request generates when it sets no n_predict/max_tokens (-1: until the "
                        "context is full)")
    p.add_argument("--temp", type=float, default=None, help="default temperature (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="default top-k (default: 40)")
    p.add_argument("--top-p", type=float, default=None, help="default top-p (default: 0.95)")
    p.add_argument("--min-p", type=float, default=None, help="default min-p (default: 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=None, help="default repeat penalty (default: 1.0)")
    p.add_argument("--repeat-last-n", type=int, default=None, help="tokens the penalties look back over")
    p.add_argument("--presence-penalty", type=float, default=None)
    p.add_argument("--frequency-penalty", type=float, default=None)
    p.add_argument("--slots", action=argparse.BooleanOptionalAction, default=True,
                   help="GET /slots (default: on, as llama-server)")
    p.add_argument("--metrics", action="store_true", help="GET /metrics (Prometheus; default: off, 501)")
    p.add_argument("--slot-save-path", default=None, metavar="DIR",
                   help="folder of the slot files of POST /slots/{id}?action=save|restore (created if "
                        "missing; without it slot actions answer 501, as llama-server)")
    p.add_argument("--jinja", action=argparse.BooleanOptionalAction, default=True,
                   help="accepted for llama-server's sake: chat templates always run through Jinja")
    p.add_argument("-rea", "--reasoning", choices=["on", "off", "auto"], default="auto",
                   help="thinking in chat templates: on/off set enable_thinking (default: auto)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="llama-server's --verbose: chat answers carry __verbose (the native /completion body)")
    p.add_argument("--tags", default=None, help="model tags, comma-separated (listed by /v1/models)")
    p.add_argument("--sleep-idle-seconds", type=int, default=-1,
                   help="unload the model after this many seconds without a request and load it again on "
                        "the next one (-1: never; /health, /props, /models, /metrics do not wake it)")


def _model_args(p: argparse.ArgumentParser, generation: bool = True) -> None:
    p.add_argument("model", help="path to a GGUF model, or a registry name (cortex-llama models)")
    if generation:
        p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context of the request")
    else:  # the server: llama-server's meaning
        p.add_argument("-c", "--ctx-size", type=int, default=None,
                       help="KV cells in all, as llama-server's -c: each slot gets ctx-size / parallel "
                            "(all of it with --kv-unified); 0: the model's training context "
                            "(default: 4096 per slot)")
    p.add_argument("-t", "--threads", type=int, default=4)
    p.add_argument("-b", "--batch-size", type=int, default=512)
    p.add_argument("-ngl", "--gpu-layers", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat-template", default=None, help="a built-in template name or a Jinja template")
    p.add_argument("--rpc", default=None, metavar="HOST:PORT,...",
                   help="offload to these llama.cpp RPC servers (with -ngl)")
    if generation:
        p.add_argument("-n", "--n-predict", type=int, default=256, help="max tokens")
        p.add_argument("--temp", type=float, default=0.8)
        p.add_argument("--top-k", type=int, default=40)
        p.add_argument("--top-p", type=float, default=0.95)
        p.add_argument("--min-p", type=float, default=0.05)
        p.add_argument("--repeat-penalty", type=float, default=1.0)
        p.add_argument("--stop", action="append", help="a stop string (repeatable)")
        p.add_argument("--grammar-file", help="a GBNF grammar file")
        p.add_argument("--json-schema", help="a JSON schema file")
        p.add_argument("--mmproj", default=None, help="a multimodal projector GGUF (images/audio in)")
        p.add_argument("--image", action="append", help="an image file for the prompt (repeatable; "
                       "needs --mmproj)")
        p.add_argument("--audio", action="append", help="an audio file (wav, mp3, flac; repeatable; "
                       "needs an audio --mmproj)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortex-llama", description="llama.cpp through cffi")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="version, llama.cpp commit, backends and devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-test-model", help="write a random-weight llama GGUF model")
    p.add_argument("out")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "1b"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_test_model)

    p = sub.add_parser("run", help="stream a completion to stdout")
    _model_args(p)
    _speculative_args(p)
    p.add_argument("prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat (/exit quits, /reset forgets)")
    _model_args(p)
    _speculative_args(p)
    p.add_argument("--system", default=None, help="a system message")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("embed", help="print embeddings as JSON (texts from arguments or stdin)")
    _model_args(p, generation=False)
    p.add_argument("text", nargs="*")
    p.add_argument("--pooling", default=None, choices=["mean", "cls", "last"])
    p.add_argument("--no-normalize", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("tokenize", help="show the tokens of a text")
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--no-special", action="store_true", help="do not add BOS/EOS")
    p.add_argument("--parse-special", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("demo", help="show streaming, chat, batching, JSON output and embeddings on "
                       f"{DEMO_MODEL} (pulled on first use; else on a random-weight test model)")
    p.add_argument("--random", action="store_true", help="use a random-weight test model")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"],
                   help="the random-weight model's preset")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pull", help="download registry models into the cache (see `models`)")
    p.add_argument("name", nargs="+", help="a registry name, e.g. smollm2-135m-instruct")
    p.add_argument("--force", action="store_true", help="download again even when cached")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("models", help="the model registry and what is cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("rpc-server", help="serve this machine's devices to llama.cpp RPC clients "
                                          "(no authentication: trusted networks only)")
    p.add_argument("-H", "--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("-p", "--port", type=int, default=50052)
    p.add_argument("-d", "--device", default=None, help="comma-separated device names "
                   "(default: the GPUs, else the CPU)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    p.add_argument("--cache-dir", default=None, help="cache large tensors here by hash")
    p.set_defaults(func=cmd_rpc_server)
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (pip install 'cortex-llama[server]')")
    _model_args(p, generation=False)
    _speculative_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-np", "--parallel", type=int, default=8, help="parallel sequences (slots)")
    p.add_argument("-kvu", "--kv-unified", action="store_true",
                   help="one KV cache shared by the slots (default: a stream per slot, as llama-server)")
    p.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"], default="auto",
                   help="flash attention (default: auto, llama.cpp's default)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="physical batch size")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' or 'X-Api-Key: KEY' on all but /health "
                        "(default: $CORTEX_LLAMA_API_KEY)")
    p.add_argument("-a", "--alias", "--model-alias", dest="model_alias", default=None,
                   help="the model id /v1/models lists and answers carry (default: a slug of the GGUF file "
                        "name), or several, comma-separated (the id is the first in sorted order); any "
                        "requested model name is accepted")
    p.add_argument("--reasoning-format", default="auto", choices=["none", "auto", "deepseek", "deepseek-legacy"],
                   help="llama-server's --reasoning-format: where a model's thoughts go (default: auto, "
                        "message.reasoning_content)")
    p.add_argument("--chat-template-file", default=None, help="a file holding a Jinja chat template")
    p.add_argument("--embeddings", "--embedding", action="store_true", help="enable /v1/embeddings")
    p.add_argument("--lora", action="append", default=[], metavar="FILE",
                   help="a LoRA adapter (repeatable; scale 1.0); a request's 'lora' field sets its own scales")
    p.add_argument("--lora-scaled", action="append", nargs=2, default=[], metavar=("FILE", "SCALE"),
                   help="a LoRA adapter with its default scale (repeatable)")
    p.add_argument("--lora-init-without-apply", action="store_true",
                   help="load the adapters with scale 0 (set scales with POST /lora-adapters or per request)")
    p.add_argument("--cache-ram", "-cram", type=int, default=8192, metavar="MiB",
                   help="host memory for prompts that left their slot, restored when a request starts "
                        "the same way (default: 8192, as llama-server; 0: off, -1: no limit)")
    p.add_argument("--slot-prompt-similarity", "-sps", type=float, default=0.1, metavar="F",
                   help="take a free slot for its cached prefix when that prefix is more than this fraction "
                        "of the prompt, else the least recently used slot (default: 0.1, as llama-server; "
                        "0: any shared prefix)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip llama.cpp's warm-up run at load (one decode of BOS and EOS)")
    p.add_argument("--reranking", "--rerank", action="store_true",
                   help="serve /rerank with a reranking model (embeddings with rank pooling)")
    p.add_argument("--pooling", default=None, choices=["none", "mean", "cls", "last", "rank"],
                   help="the embeddings' pooling (default: the model's)")
    p.add_argument("--mmproj", default=None,
                   help="a multimodal projector GGUF: image_url / input_audio parts in chat messages")
    p.add_argument("--media-path", default=None, metavar="DIR",
                   help="a directory chat media parts may read files from (file://NAME or a path "
                        "inside it; default: no local file, data: URLs only)")
    p.add_argument("--allowed-hosts", action="append", default=None, metavar="NAME,...",
                   help="Host header values answered besides loopback and the bound address "
                        "(repeatable; '*': no Host check)")
    p.add_argument("--cors-origins", action="append", default=None, metavar="ORIGIN,...",
                   help="origins that get CORS headers, e.g. http://localhost:3000 (repeatable; '*': "
                        "any; default: any with --api-key, none without)")
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests before 503 (default: no limit)")
    p.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="request body limit in bytes")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--shutdown-timeout", type=int, default=30,
                   help="seconds running requests may take to finish on SIGTERM")
    _serve_llama_flags(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LlamaError

    try:
        return int(args.func(args))
    except (LlamaError, ValueError, OSError) as exc:
        print(f"cortex-llama: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
