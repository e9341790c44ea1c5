#!/usr/bin/env python3
"""The ``llama-server`` stand-in that bench/server_suite.py puts in the suite's
``LLAMA_SERVER_BIN_PATH`` (through a two-line shell wrapper it writes).

It receives llama-server's argv as llama.cpp's tools/server/tests/utils.py
builds it, replaces every model reference (``-hf``/``--hf-repo``,
``--hf-file``, ``-m``/``--model``, ``--model-url``, ``--model-draft``, ...)
with one local GGUF (a reranker's with a local reranker), and then

* mode ``native``: execs the native llama-server with that argv;
* mode ``cortex``: execs ``python -m cortex_llama serve`` with the flags it has
  a counterpart for, and drops the others.

Every start appends one JSON line to ``$SERVER_SUITE_LOG``: the test that was
running (``$PYTEST_CURRENT_TEST``, which pytest sets and the suite passes on),
the argv received, the model references replaced, the flags dropped, and
whether the start was in router mode (no model) or used MCP/tools flags, which
are out of the harness's scope. In cortex mode a router-mode start exits 2.

Configuration (set by the harness): ``SERVER_SUITE_MODE`` (native|cortex),
``SERVER_SUITE_MODEL`` (the GGUF), ``SERVER_SUITE_RERANK_MODEL`` (the GGUF a
reranker reference maps to instead, when set), ``SERVER_SUITE_NATIVE_BIN``,
``SERVER_SUITE_PYTHON`` (the interpreter for cortex-llama),
``SERVER_SUITE_THREADS`` (``-t`` when a test sets none), ``SERVER_SUITE_LOG``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

#: flags that take no value (llama-server's, as the suite passes them)
BOOLEAN_FLAGS: frozenset[str] = frozenset({
    "--offline", "--cont-batching", "-cb", "--no-cont-batching", "-nocb", "--embedding", "--embeddings",
    "--reranking", "--rerank", "--metrics", "--kv-unified", "-kvu", "--swa-full", "--slots", "--no-slots",
    "--verbose", "-v", "--log-verbose", "--context-shift", "--no-context-shift", "--no-ui", "--no-webui",
    "--no-models-autoload", "--jinja", "--no-jinja", "--no-mmproj", "--no-cache-idle-slots",
    "--ui-mcp-proxy", "--backend_sampling", "--backend-sampling", "--no-warmup", "--mlock", "--no-mmap",
    "--cache-prompt", "--no-cache-prompt", "--props", "--no-prefill-assistant", "--lora-init-without-apply",
})

#: model references: each is replaced by the local model (or, for the draft, by it too)
MODEL_FLAGS: frozenset[str] = frozenset({"-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo",
                                         "-dr", "--docker-repo"})
#: references that only qualify a model reference (consumed with it)
MODEL_QUALIFIERS: frozenset[str] = frozenset({"-hff", "--hf-file", "-hft", "--hf-token"})
#: a draft model for speculative decoding: the local model again (native), dropped (cortex)
DRAFT_FLAGS: frozenset[str] = frozenset({"-md", "--model-draft", "-hfd", "-hfrd", "--hf-repo-draft",
                                         "-hffd", "--hf-file-draft"})
#: remote projector / vocoder references: there is no local counterpart, so they are dropped
REMOTE_EXTRA_FLAGS: frozenset[str] = frozenset({"-mmu", "--mmproj-url", "-hfv", "-hfrv", "--hf-repo-v",
                                                "-hffv", "--hf-file-v"})
#: router mode (a server that loads models on demand) and MCP / built-in tools: out of scope
ROUTER_FLAGS: frozenset[str] = frozenset({"--models-dir", "--models-max", "--models-preset",
                                          "--no-models-autoload"})
MCP_FLAGS: frozenset[str] = frozenset({"--ui-mcp-proxy", "--mcp-servers-config", "--mcp-servers-json",
                                       "--tools", "--tools-runtime"})

_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


@dataclass
class Flag:
    name: str
    value: str | None


@dataclass
class Parsed:
    flags: list[Flag] = field(default_factory=list)
    model_refs: list[list[str]] = field(default_factory=list)
    has_model: bool = False
    has_draft: bool = False
    router: bool = False
    mcp: bool = False


def parse(argv: list[str]) -> Parsed:
    """Split llama-server's argv into flags (name, value); model references are
    set aside. A flag takes the next token as its value unless it is a known
    boolean flag or the next token is another flag (a negative number is a value)."""
    out = Parsed()
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("-"):
            out.flags.append(Flag("", tok))  # a stray positional; recorded as dropped
            i += 1
            continue
        name, eq, inline = tok.partition("=")
        value: str | None = None
        if eq:
            value = inline
        elif name not in BOOLEAN_FLAGS and i + 1 < len(argv) and (
                not argv[i + 1].startswith("-") or _NUMBER.match(argv[i + 1])):
            value = argv[i + 1]
            i += 1
        i += 1
        if name in MODEL_FLAGS or name in MODEL_QUALIFIERS:
            out.model_refs.append([name, value or ""])
            out.has_model = out.has_model or name in MODEL_FLAGS
            continue
        if name in DRAFT_FLAGS:
            out.model_refs.append([name, value or ""])
            out.has_draft = True
            continue
        if name in ROUTER_FLAGS:
            out.router = True
        if name in MCP_FLAGS:
            out.mcp = True
        out.flags.append(Flag(name, value))
    if not out.has_model:
        out.router = True
    return out


def _first_int(value: str | None) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def native_argv(p: Parsed, binary: str, model: str, threads: str | None) -> tuple[list[str], list[Flag]]:
    """The native command: the same flags with the local model in place of every reference."""
    argv = [binary]
    if p.has_model:
        argv += ["-m", model]
    if p.has_draft:
        argv += ["-md", model]
    for f in p.flags:
        if f.name in REMOTE_EXTRA_FLAGS:
            continue
        argv += [f.value or ""] if not f.name else [f.name] if f.value is None else [f.name, f.value]
    if threads and not any(f.name in ("-t", "--threads") for f in p.flags):
        argv += ["-t", threads]
    dropped = [f for f in p.flags if f.name in REMOTE_EXTRA_FLAGS]
    return argv, dropped


#: cortex-llama serve's counterpart of a llama-server flag: a function of the value
#: returning the flags to pass, or None when the value has no counterpart (dropped)
Mapper = Callable[[str | None], list[str] | None]


def _same(flag: str) -> Mapper:
    return lambda v: [flag] if v is None else [flag, v]


def _positive_int(flag: str) -> Mapper:
    def m(v: str | None) -> list[str] | None:
        n = _first_int(v)
        return [flag, str(n)] if n is not None and n > 0 else None
    return m


def _seed(v: str | None) -> list[str] | None:
    n = _first_int(v)
    return ["--seed", str(n)] if n is not None and n >= 0 else None


def _reasoning_format(v: str | None) -> list[str] | None:
    return ["--reasoning-format", v] if v in ("none", "auto", "deepseek", "deepseek-legacy") else None


def _reasoning(v: str | None) -> list[str] | None:
    return ["--reasoning", v] if v in ("on", "off", "auto") else None


def _flash_attn(v: str | None) -> list[str] | None:
    return ["-fa", v] if v in ("on", "off", "auto") else None


def _pooling(v: str | None) -> list[str] | None:
    return ["--pooling", v] if v in ("none", "mean", "cls", "last", "rank") else None


def _cors_origins(v: str | None) -> list[str] | None:
    """llama-server's origin list; its special value ``localhost`` (reflect a local
    Origin) has no counterpart."""
    return ["--cors-origins", v] if v and v != "localhost" else None


CORTEX_FLAGS: dict[str, Mapper] = {
    "--host": _same("--host"),
    "--port": _same("--port"),
    "-c": _positive_int("-c"), "--ctx-size": _positive_int("-c"),
    "-np": _positive_int("-np"), "--parallel": _positive_int("-np"),
    "-t": _positive_int("-t"), "--threads": _positive_int("-t"),
    "-b": _positive_int("-b"), "--batch-size": _positive_int("-b"),
    "-ngl": _same("-ngl"), "--gpu-layers": _same("-ngl"), "--n-gpu-layers": _same("-ngl"),
    "-s": _seed, "--seed": _seed,
    "--api-key": _same("--api-key"),
    "-a": _same("--model-alias"), "--alias": _same("--model-alias"),
    "--chat-template": _same("--chat-template"),
    "--chat-template-file": _same("--chat-template-file"),
    "--reasoning-format": _reasoning_format,
    "--embedding": lambda v: ["--embeddings"], "--embeddings": lambda v: ["--embeddings"],
    "--mmproj": _same("--mmproj"),
    "--rpc": _same("--rpc"),
    "-n": _same("-n"), "--n-predict": _same("-n"), "--predict": _same("-n"),
    "--temp": _same("--temp"), "--top-k": _same("--top-k"), "--top-p": _same("--top-p"),
    "--min-p": _same("--min-p"), "--repeat-penalty": _same("--repeat-penalty"),
    "--repeat-last-n": _same("--repeat-last-n"),
    "--slots": _same("--slots"), "--no-slots": _same("--no-slots"), "--metrics": _same("--metrics"),
    "--slot-save-path": _same("--slot-save-path"),
    "--jinja": _same("--jinja"), "--no-jinja": _same("--no-jinja"),
    "-rea": _reasoning, "--reasoning": _reasoning,
    "--sleep-idle-seconds": _same("--sleep-idle-seconds"),
    "--tags": _same("--tags"),
    "-kvu": _same("--kv-unified"), "--kv-unified": _same("--kv-unified"),
    "-ub": _positive_int("-ub"), "--ubatch-size": _positive_int("-ub"),
    "-fa": _flash_attn, "--flash-attn": _flash_attn,
    "--media-path": _same("--media-path"),
    "--cors-origins": _cors_origins,
    "--presence-penalty": _same("--presence-penalty"), "--frequency-penalty": _same("--frequency-penalty"),
    "--pooling": _pooling,
    "--cache-ram": _same("--cache-ram"), "-cram": _same("--cache-ram"), "--no-warmup": _same("--no-warmup"),
    "-v": _same("--verbose"), "--verbose": _same("--verbose"),
    "--reranking": lambda v: ["--reranking"], "--rerank": lambda v: ["--reranking"],
    "--lora": _same("--lora"), "--lora-init-without-apply": _same("--lora-init-without-apply"),
}
#: flags the harness itself consumed (model resolution): not counted as dropped
CONSUMED: frozenset[str] = frozenset({"--offline"})


def cortex_argv(p: Parsed, python: str, model: str, threads: str | None) -> tuple[list[str], list[Flag]]:
    argv = [python, "-m", "cortex_llama", "serve", model]
    dropped: list[Flag] = []
    for f in p.flags:
        if f.name in CONSUMED:
            continue
        mapper = CORTEX_FLAGS.get(f.name)
        mapped = mapper(f.value) if mapper else None
        if mapped is None:
            dropped.append(f)
        else:
            argv += mapped
    if threads and not any(f.name in ("-t", "--threads") for f in p.flags):
        argv += ["-t", threads]
    if os.environ.get("DEBUG"):
        argv += ["--log-level", "debug"]
    # the suite stops a server with SIGTERM and kills it after 5 s
    argv += ["--shutdown-timeout", "2"]
    return argv, dropped


def _die_with_parent() -> None:
    """SIGTERM this process (the server after exec) when its parent, the test's pytest,
    dies: a pytest killed by the harness's timeout must not leave servers behind.
    Linux only (prctl PR_SET_PDEATHSIG survives execve); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def log(record: dict[str, object]) -> None:
    path = os.environ.get("SERVER_SUITE_LOG")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def is_reranker(p: Parsed) -> bool:
    """Whether the test's model is a reranker (the suite's ``jina-reranker-*``)."""
    return any("rerank" in value.lower() for _, value in p.model_refs)


def main(argv: list[str]) -> int:
    mode = os.environ.get("SERVER_SUITE_MODE", "native")
    p = parse(argv)
    model = os.environ["SERVER_SUITE_MODEL"]
    if is_reranker(p) and os.environ.get("SERVER_SUITE_RERANK_MODEL"):
        model = os.environ["SERVER_SUITE_RERANK_MODEL"]
    threads = os.environ.get("SERVER_SUITE_THREADS") or None
    if mode == "native":
        cmd, dropped = native_argv(p, os.environ["SERVER_SUITE_NATIVE_BIN"], model, threads)
    elif mode == "cortex":
        cmd, dropped = cortex_argv(p, os.environ.get("SERVER_SUITE_PYTHON", sys.executable), model, threads)
    else:
        print(f"server_suite_launcher: unknown SERVER_SUITE_MODE {mode!r}", file=sys.stderr)
        return 2
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    log({"time": time.time(), "test": test, "mode": mode, "argv": argv, "model": model, "model_refs": p.model_refs,
         "dropped": [[f.name, f.value] for f in dropped], "router": p.router, "mcp": p.mcp, "exec": cmd})
    if mode == "cortex" and p.router:
        print("server_suite_launcher: router mode (no model) is out of scope for cortex-llama serve",
              file=sys.stderr)
        return 2
    sys.stdout.flush()
    _die_with_parent()
    os.execv(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
