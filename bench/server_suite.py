#!/usr/bin/env python3
"""llama-server's own test suite (llama.cpp's tools/server/tests) against the native
llama-server and against ``cortex-llama serve``, on one local model.

    python3 bench/server_suite.py --mode native          # the whole non-slow suite, file by file
    python3 bench/server_suite.py --mode cortex
    python3 bench/server_suite.py --mode cortex --files test_tokenize.py -k "not unicode" --junit out.xml
    python3 bench/server_suite.py --report               # bench/results/server_suite.md from both runs

The suite is run in place of its own build: it is copied (a few hundred KiB of
Python, never llama.cpp's sources) from the vendored tree to a temporary folder,
``LLAMA_SERVER_BIN_PATH`` names a wrapper around bench/server_suite_launcher.py,
and pytest runs there with ``-m "not slow"`` (the suite's pytest.ini marker; its
``tests.sh`` does the same), one process per test file, each under ``timeout``.
The launcher maps every Hugging Face / URL / file model reference to the local
model (SmolLM2-135M-Instruct Q4_1 from the registry cache by default; the suite's
reranker to a reranker, by default the test-model maker's Qwen3-shaped one with a
classification head, quantized to Q4_0, for both servers) and either
execs the native binary or maps the flags to ``cortex-llama serve``, logging the
flags it dropped; bench/server_suite_plugin.py records each test's outcome.

Writes ``bench/results/server_suite_<mode>.json`` (every test: outcome, first error
line, reason; the launcher's dropped flags; per-file timings) and, when both
modes have run, ``bench/results/server_suite.md``: the counts for both, the tests
native passes and cortex fails grouped by reason, and the flags cortex dropped.
Tests whose server runs in router mode (no model) or with MCP / built-in tools
are out of scope and listed apart. Tests that expect a particular model's text
fail on both and so drop out of the comparison, which is "of the tests native
passes with this model, how many does cortex pass".

The suite's Python requirements (its requirements.txt pins pytest 8.3, openai 2.14,
...) go in their own venv so they do not replace the system ones:

    python3 -m venv --system-site-packages bench/.venv-server-suite
    bench/.venv-server-suite/bin/pip install -r vendor/llama.cpp/tools/server/tests/requirements.txt

This lives in bench/ rather than scripts/ because it is a measurement against the
native build, like bench/server.py: it uses the same bench/.build-server binary,
its venv follows the bench/.venv-* convention, and its results go to bench/results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LAUNCHER = HERE / "server_suite_launcher.py"
PLUGIN = HERE / "server_suite_plugin.py"
SUITE_REL = Path("vendor") / "llama.cpp" / "tools" / "server" / "tests"
NATIVE_REL = Path("bench") / ".build-server" / "bin" / "llama-server"
VENV_PYTHON = HERE / ".venv-server-suite" / "bin" / "python"
#: the suite's modules that a run needs (its requirements.txt, as import names)
SUITE_IMPORTS = ("pytest", "requests", "wget", "filelock", "openai", "numpy", "aiohttp", "prometheus_client")
#: files whose every test runs the server in router mode or with MCP servers
OUT_OF_SCOPE_FILES = frozenset({"test_router.py", "test_mcp_servers.py"})
MODES = ("native", "cortex")
#: characters of a failing test's captured output kept in the results JSON
TAIL_SAVED = 800


def _main_worktree() -> Path | None:
    """The main worktree of this checkout's repository (a linked worktree shares its
    vendored tree and native build), or None outside git."""
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute",
                                 "--git-common-dir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    main = Path(common).parent
    return main if main.resolve() != ROOT.resolve() else None


def _candidates(rel: Path) -> list[Path]:
    out = [ROOT / rel]
    main = _main_worktree()
    if main is not None:
        out.append(main / rel)
    return out


def find_suite_dir() -> Path | None:
    env = os.environ.get("SERVER_SUITE_DIR")
    for p in ([Path(env)] if env else []) + _candidates(SUITE_REL):
        if (p / "utils.py").is_file() and (p / "unit").is_dir():
            return p
    return None


def find_native_bin() -> Path | None:
    env = os.environ.get("LLAMA_SERVER_NATIVE")
    for p in ([Path(env)] if env else []) + _candidates(NATIVE_REL):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def find_model() -> Path | None:
    """SmolLM2-135M-Instruct Q4_1 from the registry cache (no download)."""
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from cortex_llama import registry

        path = registry.cached("smollm2-135m-instruct")
    except Exception:  # noqa: BLE001 - a bad cache reads as "no model"
        path = None
    finally:
        sys.path.remove(str(ROOT / "src"))
    return Path(path) if path else None


def synthetic_reranker() -> Path:
    """The test-model maker's reranker (random weights, a yes/no classification head),
    quantized to Q4_0, made once under bench/.models. SmolLM2 has no ranking head:
    cortex-llama refuses ``--reranking`` on it, where native scores its hidden state."""
    out = ROOT / "bench" / ".models" / "suite-reranker-q4_0.gguf"
    if out.is_file():
        return out
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from cortex_llama import quantize
        from cortex_llama.testmodel import make_test_model

        out.parent.mkdir(parents=True, exist_ok=True)
        f32 = make_test_model(out.with_name("suite-reranker-f32.gguf"), "small", ranking_head=True)
        quantize(f32, out, "q4_0")
    finally:
        sys.path.remove(str(ROOT / "src"))
    return out


def suite_python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.is_file() else sys.executable


def missing_requirements(python: str) -> list[str]:
    """The suite's modules that ``python`` cannot import."""
    code = ("import importlib.util,sys;print(' '.join(m for m in sys.argv[1:] "
            "if importlib.util.find_spec(m) is None))")
    out = subprocess.run([python, "-c", code, *SUITE_IMPORTS], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else list(SUITE_IMPORTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(suite: Path, work: Path, mode: str, model: Path, native_bin: Path | None,
            threads: int, rerank_model: Path | None = None) -> tuple[Path, dict[str, str]]:
    """A copy of the suite in ``work/llama.cpp/tools/server/tests`` with the plugin beside
    its conftest, the launcher wrapper, and the environment the suite and the launcher
    read. The suite names files relative to its place in the llama.cpp tree
    (``../../../models/templates/*.jinja``, ``../mtmd/test-1.jpeg``), so the copy sits at
    the same depth, with ``models`` and ``tools/mtmd`` linked (not copied) from the tree."""
    tree = suite.parent.parent.parent
    tests = work / "llama.cpp" / "tools" / "server" / "tests"
    shutil.copytree(suite, tests, ignore=shutil.ignore_patterns("tmp", "__pycache__", ".pytest_cache"))
    for rel in ("models", "tools/mtmd"):
        if (tree / rel).exists():
            (work / "llama.cpp" / rel).symlink_to(tree / rel, target_is_directory=True)
    (tests / "tmp").mkdir(exist_ok=True)
    shutil.copy2(PLUGIN, tests / PLUGIN.name)
    wrapper = work / "llama-server"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {LAUNCHER} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SERVER_SUITE_"))}
    env.pop("DEBUG_EXTERNAL", None)
    env.update({
        "LLAMA_SERVER_BIN_PATH": str(wrapper),
        "LLAMA_CACHE": str(tests / "tmp"),
        "SERVER_SUITE_MODE": mode,
        "SERVER_SUITE_MODEL": str(model),
        "SERVER_SUITE_RERANK_MODEL": str(rerank_model or ""),
        "SERVER_SUITE_NATIVE_BIN": str(native_bin or ""),
        "SERVER_SUITE_PYTHON": sys.executable,
        "SERVER_SUITE_THREADS": str(threads),
        "SERVER_SUITE_LOG": str(work / "launches.jsonl"),
        "SERVER_SUITE_RESULTS": str(work / "results.jsonl"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return tests, env


@dataclass
class FileRun:
    file: str
    seconds: float
    returncode: int
    timed_out: bool


@dataclass
class Run:
    mode: str
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    launches: list[dict[str, Any]] = field(default_factory=list)
    files: list[FileRun] = field(default_factory=list)


def run_suite(mode: str, files: list[str], *, k: str | None, junit: Path | None, per_file_timeout: int,
              test_timeout: int, threads: int, model: Path, native_bin: Path | None, python: str,
              suite: Path, verbose: bool, extra: list[str], rerank_model: Path | None = None,
              after_file: Callable[[Run], None] | None = None) -> Run:
    """Each file in its own pytest under ``timeout``; ``after_file`` gets the results so
    far after every file (the caller saves them, so a run cut short keeps what it did)."""
    run = Run(mode)
    with tempfile.TemporaryDirectory(prefix=f"server-suite-{mode}-") as tmp:
        work = Path(tmp)
        tests, env = prepare(suite, work, mode, model, native_bin, threads, rerank_model)
        env["SERVER_SUITE_TEST_TIMEOUT"] = str(test_timeout)
        for i, name in enumerate(files):
            env["PORT"] = str(free_port())
            cmd = ["timeout", "-k", "10", str(per_file_timeout), python, "-m", "pytest", "-p",
                   "server_suite_plugin", "-m", "not slow", "-q", "-rN", "-p", "no:cacheprovider",
                   f"unit/{name}", *extra]
            if k:
                cmd += ["-k", k]
            if junit:
                cmd += [f"--junitxml={work / f'junit-{i}.xml'}"]
            t0 = time.monotonic()
            out = subprocess.run(cmd, cwd=tests, env=env, stdout=None if verbose else subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            seconds = time.monotonic() - t0
            timed_out = out.returncode in (124, 137)
            run.files.append(FileRun(name, round(seconds, 1), out.returncode, timed_out))
            tail = "" if verbose else (out.stdout or "").strip().splitlines()[-1:]
            print(f"[{mode}] {name}: {seconds:.1f} s, rc {out.returncode}{' (timeout)' if timed_out else ''}"
                  f" {tail[0] if tail else ''}", flush=True)
            if out.returncode not in (0, 1, 5, 124, 137) and not verbose:
                print((out.stdout or "")[-3000:], flush=True)
            _collect(run, work, per_file_timeout)
            if after_file is not None:
                after_file(run)
        if junit:
            merge_junit(sorted(work.glob("junit-*.xml")), junit)
    return run


def _collect(run: Run, work: Path, per_file_timeout: int) -> None:
    run.tests = collect_results(work / "results.jsonl")
    timed_out = {f.file for f in run.files if f.timed_out}
    for nodeid, t in run.tests.items():
        if t["outcome"] == "running":  # the test a killed file was running
            file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            t.update(outcome="failed", error=f"file timed out after {per_file_timeout} s" if file in timed_out
                     else "no report (the pytest process died)")
    run.launches = read_jsonl(work / "launches.jsonl")
    classify(run)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect_results(path: Path) -> dict[str, dict[str, Any]]:
    """One outcome per test: failed (call failed) / error (setup or teardown failed) /
    skipped / passed / xfailed, with the first error line and the output tail."""
    tests: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(path):
        t = tests.setdefault(r["nodeid"], {"outcome": "running", "duration": 0.0})
        t["duration"] = round(t["duration"] + r["duration"], 3)
        if r["when"] == "setup":
            t["outcome"] = {"passed": "running", "skipped": "skipped", "failed": "error"}[r["outcome"]]
        elif r["when"] == "call":
            if r["outcome"] == "skipped" and "error" in r:
                t["outcome"] = "xfailed" if r.get("error", "").startswith("XFAIL") else "skipped"
            else:
                t["outcome"] = r["outcome"]
        elif r["when"] == "teardown":
            if r["outcome"] == "failed" and t["outcome"] == "passed":
                t["outcome"] = "error"
            elif t["outcome"] == "running":
                t["outcome"] = "passed" if r["outcome"] == "passed" else "error"
        if r["outcome"] != "passed" and "error" in r and "error" not in t:
            t["error"] = r["error"]
            if "output_tail" in r:
                t["output_tail"] = r["output_tail"]
    return tests


def merge_junit(parts: list[Path], out: Path) -> None:
    """One junit file holding every per-file test suite."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites")
    for p in parts:
        tree = ET.parse(p).getroot()
        root.extend(tree.findall("testsuite") if tree.tag == "testsuites" else [tree])
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)


# -- reasons -------------------------------------------------------------------------------------

OUT_OF_SCOPE = "out of scope: router / MCP mode"
REASON_ORDER = (
    "server did not start",
    "missing endpoint (404/405/501)",
    "missing field in the response",
    "status code differs",
    "flag unsupported (dropped by the launcher)",
    "streaming / SSE shape",
    "network / Hugging Face download",
    "timeout",
    "value differs (model-specific or behaviour)",
    "other",
)


def _flags_of(launches: Iterable[dict[str, Any]]) -> set[str]:
    return {d[0] for rec in launches for d in rec.get("dropped", []) if d[0]}


def reason_of(nodeid: str, t: dict[str, Any], launches: list[dict[str, Any]], always: set[str]) -> str:
    file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if file in OUT_OF_SCOPE_FILES or any(r.get("router") or r.get("mcp") for r in launches):
        return OUT_OF_SCOPE
    err = t.get("error", "")
    tail = t.get("output_tail", "")
    if re.search(r"Server process died|Server did not start|server_suite_launcher: router", err):
        return "server did not start"
    if re.search(r"ran past|timed out|ReadTimeout|TimeoutError", err):
        return "timeout"
    if re.search(r"wget|urlopen|HTTP Error 4|Name or service not known|Temporary failure in name resolution"
                 r"|NameResolutionError|huggingface", err, re.I):
        return "network / Hugging Face download"
    if re.search(r"\b(404|405|501)\b|Not Found|Method Not Allowed|NotFoundError", err):
        return "missing endpoint (404/405/501)"
    if re.search(r"KeyError|not in |'NoneType' object is not subscriptable|has no attribute|"
                 r"is not None|NoneType|TypeError: string indices", err):
        return "missing field in the response"
    if re.search(r"assert \d{3} == \d{3}|status_code|Error code: \d{3}|BadRequestError|ServerError|"
                 r"UnprocessableEntity|InternalServerError|APIStatusError", err):
        return "status code differs"
    if re.search(r"JSONDecodeError|Expecting value|data: |\bSSE\b|\bstream", err):
        return "streaming / SSE shape"
    if _flags_of(launches) - always:
        return "flag unsupported (dropped by the launcher)"
    if re.search(r"assert|AssertionError", err):
        return "value differs (model-specific or behaviour)"
    return "other" if err or not tail else "other"


def classify(run: Run) -> None:
    by_test: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in run.launches:
        by_test[rec.get("test", "")].append(rec)
    # flags dropped in every start (the suite's defaults: --temp, --no-slots, ...) say nothing about a test
    starts = [r for r in run.launches if not r.get("router")]
    counts = Counter(f for r in starts for f in {d[0] for d in r.get("dropped", [])})
    always = {f for f, n in counts.items() if starts and n == len(starts)}
    for nodeid, t in run.tests.items():
        launches = by_test.get(nodeid, [])
        t["dropped"] = sorted(_flags_of(launches) - always)
        t["out_of_scope"] = reason_of(nodeid, {}, launches, always) == OUT_OF_SCOPE
        if t["outcome"] in ("failed", "error"):
            t["reason"] = reason_of(nodeid, t, launches, always)
            if t["reason"] == "server did not start":
                t["detail"] = startup_error(t.get("output_tail", ""))


def startup_error(output: str) -> str:
    """The server's own last error line from a failed start's captured output."""
    lines = [ln.strip() for ln in output.splitlines()
             if re.search(r"error|Error|unrecognized|invalid|exception", ln) and "tests: starting" not in ln]
    return lines[-1][:300] if lines else ""


def dropped_flags(run: Run) -> list[dict[str, Any]]:
    """Each flag the launcher dropped: how many starts and tests passed it, with example values."""
    starts: Counter[str] = Counter()
    tests: dict[str, set[str]] = defaultdict(set)
    values: dict[str, set[str]] = defaultdict(set)
    for rec in run.launches:
        for name, value in rec.get("dropped", []):
            key = name or "(positional)"
            starts[key] += 1
            tests[key].add(rec.get("test", ""))
            if value is not None and len(values[key]) < 4:
                values[key].add(str(value))
    return [{"flag": f, "starts": n, "tests": len(tests[f]), "values": sorted(values[f])}
            for f, n in starts.most_common()]


def counts(run: Run, *, in_scope_only: bool = False) -> dict[str, int]:
    c: Counter[str] = Counter()
    for t in run.tests.values():
        if in_scope_only and t.get("out_of_scope"):
            continue
        c[t["outcome"]] += 1
    c["total"] = sum(c.values())
    return dict(c)


def save(run: Run, path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for t in run.tests.values():  # the server log's last lines are enough to tell why
        if "output_tail" in t:
            t["output_tail"] = t["output_tail"][-TAIL_SAVED:]
    data = {"mode": run.mode, "meta": meta, "counts": counts(run), "counts_in_scope": counts(run, in_scope_only=True),
            "files": [vars(f) for f in run.files], "dropped_flags": dropped_flags(run), "tests": run.tests,
            "launches": [{k: r.get(k) for k in ("test", "dropped", "router", "mcp")} for r in run.launches]}
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def merged(previous: Path, run: Run) -> Run:
    """``run`` on top of an earlier results JSON: the earlier files this run did not repeat are kept."""
    if not previous.is_file():
        return run
    data = json.loads(previous.read_text())
    redone = {f.file for f in run.files}
    keep = lambda nodeid: nodeid.split("::", 1)[0].rsplit("/", 1)[-1] not in redone  # noqa: E731
    out = Run(run.mode)
    out.files = [FileRun(**f) for f in data.get("files", []) if f["file"] not in redone] + run.files
    out.launches = [r for r in data.get("launches", []) if keep(r.get("test", ""))] + run.launches
    out.tests = {n: t for n, t in data.get("tests", {}).items() if keep(n)}
    out.tests.update(run.tests)
    classify(out)
    return out


def summary_text(run: Run) -> str:
    c = counts(run)
    lines = [f"{run.mode}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))]
    groups: dict[str, list[str]] = defaultdict(list)
    for nodeid, t in sorted(run.tests.items()):
        if t["outcome"] in ("failed", "error"):
            groups[t["reason"]].append(f"  {nodeid}: {t.get('error', '')[:160]}")
    for reason in (*REASON_ORDER, OUT_OF_SCOPE):
        if groups.get(reason):
            lines += [f"{reason} ({len(groups[reason])})", *groups[reason]]
    return "\n".join(lines)


# -- the combined report ----------------------------------------------------------------------------

def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def report(native: dict[str, Any], cortex: dict[str, Any]) -> str:
    nt, ct = native["tests"], cortex["tests"]
    in_scope = [n for n, t in nt.items() if not t.get("out_of_scope") and not ct.get(n, {}).get("out_of_scope")]
    native_pass = sorted(n for n in in_scope if nt[n]["outcome"] == "passed")
    both = [n for n in native_pass if ct.get(n, {}).get("outcome") == "passed"]
    gaps = [n for n in native_pass if ct.get(n, {}).get("outcome") != "passed"]
    cortex_only = sorted(n for n in in_scope if nt[n]["outcome"] != "passed"
                         and ct.get(n, {}).get("outcome") == "passed")
    meta = native.get("meta", {})

    def count_row(name: str, d: dict[str, Any], key: str) -> str:
        c = d[key]
        return (f"| {name} | {c.get('total', 0)} | {c.get('passed', 0)} | {c.get('failed', 0)} | "
                f"{c.get('error', 0)} | {c.get('skipped', 0)} | {c.get('xfailed', 0)} |")

    out = [
        "# llama-server's test suite: native llama-server vs cortex-llama serve",
        "",
        f"llama.cpp {meta.get('llama_cpp_commit', '?')}, tools/server/tests, `-m \"not slow\"`, one pytest "
        f"process per file, every model mapped to `{Path(meta.get('model', '?')).name}` "
        f"(the reranker to `{Path(meta.get('rerank_model') or meta.get('model', '?')).name}`), "
        f"`-t {meta.get('threads', '?')}` where a test sets no threads. Generated by "
        "`python3 bench/server_suite.py --mode native|cortex` (see its docstring); the launcher's "
        "flag mapping is bench/server_suite_launcher.py.",
        "",
        "| mode | tests | passed | failed | error | skipped | xfailed |",
        "|---|---|---|---|---|---|---|",
        count_row("native", native, "counts"),
        count_row("cortex", cortex, "counts"),
        count_row("native, in scope", native, "counts_in_scope"),
        count_row("cortex, in scope", cortex, "counts_in_scope"),
        "",
        f"**Of the {len(native_pass)} in-scope tests native llama-server passes with this model, "
        f"cortex-llama serve passes {len(both)} ({100 * len(both) / max(1, len(native_pass)):.0f}%).** "
        f"{len(cortex_only)} in-scope tests pass on cortex only"
        + (f" ({', '.join(f'`{n}`' for n in cortex_only[:8])}{', ...' if len(cortex_only) > 8 else ''})."
           if cortex_only else "."),
        "",
        "Wall time per mode: native "
        f"{sum(f['seconds'] for f in native['files']):.0f} s, cortex {sum(f['seconds'] for f in cortex['files']):.0f} s "
        f"({os.cpu_count()} cores{', ' + meta['note'] if meta.get('note') else ''}).",
        "",
        "## Native passes, cortex fails (by reason)",
        "",
    ]
    groups: dict[str, list[str]] = defaultdict(list)
    for n in gaps:
        t = ct.get(n, {"outcome": "missing", "error": "not run in cortex mode"})
        groups[t.get("reason", "other")].append(n)
    for reason in (*REASON_ORDER, "other"):
        names = groups.pop(reason, [])
        if not names:
            continue
        out += [f"### {reason} ({len(names)})", "", "| test | first error line (cortex) | flags dropped |",
                "|---|---|---|"]
        for n in names:
            t = ct.get(n, {})
            detail = f" ({t['detail']})" if t.get("detail") else ""
            out.append(f"| `{n}` | {_md_escape(t.get('error', '')[:200] + detail)} | "
                       f"{' '.join(t.get('dropped', [])) or ''} |")
        out.append("")
    by_file: Counter[str] = Counter(n.split("::")[0] for n in gaps)
    out += ["Gaps per file: " + ", ".join(f"{f.removeprefix('unit/')} {c}" for f, c in by_file.most_common()), ""]

    native_fail = sorted(n for n in in_scope if nt[n]["outcome"] in ("failed", "error"))
    out += ["## In scope, failing on native too (model-specific expectations and the like)", "",
            f"{len(native_fail)} tests; the first error line on native:", "",
            "| test | first error line (native) | cortex |", "|---|---|---|"]
    for n in native_fail:
        out.append(f"| `{n}` | {_md_escape(nt[n].get('error', '')[:160])} | {ct.get(n, {}).get('outcome', '-')} |")
    out.append("")

    scope = sorted(n for n, t in nt.items() if t.get("out_of_scope") or ct.get(n, {}).get("out_of_scope"))
    out += ["## Out of scope: router / MCP mode", "",
            f"{len(scope)} tests start a server without a model (router mode) or with MCP / built-in "
            "tools flags; cortex-llama serve has neither, and in cortex mode the launcher refuses the start. "
            "Native outcomes: " + ", ".join(f"{k} {v}" for k, v in
                                            sorted(Counter(nt[n]["outcome"] for n in scope).items())) + ".", ""]
    files: Counter[str] = Counter(n.split("::")[0] for n in scope)
    out += [", ".join(f"`{f}` ({c})" for f, c in sorted(files.items())), ""]

    out += ["## Flags cortex-llama serve lacks (dropped by the launcher)", "",
            "Starts and tests that passed each flag, in cortex mode, and how many native-passing tests "
            "that passed it fail on cortex.", "", "| flag | starts | tests | gap tests using it | values |",
            "|---|---|---|---|---|"]
    gap_flags: Counter[str] = Counter(f for n in gaps for f in ct.get(n, {}).get("dropped", []))
    for d in cortex.get("dropped_flags", []):
        out.append(f"| `{d['flag']}` | {d['starts']} | {d['tests']} | {gap_flags.get(d['flag'], 0)} | "
                   f"{_md_escape(' '.join(d['values']))} |")
    out += ["", "'gap tests using it' counts the native-passing tests that fail on cortex and passed the "
            "flag: a correlation, not a cause (`--n-predict`, `--no-slots` ride along with most tests). Flags "
            "dropped on every start (`--temp`) are left out of it.", ""]

    suite = find_suite_dir()
    ran = {f["file"] for f in native["files"]} & {f["file"] for f in cortex["files"]}
    not_run = sorted(p.name for p in (suite / "unit").glob("test_*.py") if p.name not in ran) if suite else []
    if not_run:
        out += ["## Files not run in both modes yet", "",
                f"{len(ran)} of {len(ran) + len(not_run)} test files are in this report. Continue with "
                "`python3 bench/server_suite.py --mode native --merge --files ...` (and `--mode cortex`): "
                + ", ".join(f"`{f}`" for f in not_run) + ".", ""]
    out += ["## Timings (s per file)", "", "| file | native | cortex |", "|---|---|---|"]
    ctimes = {f["file"]: f for f in cortex["files"]}
    for f in native["files"]:
        c = ctimes.get(f["file"], {})
        mark = lambda r: f"{r.get('seconds', '-')}" + (" (timeout)" if r.get("timed_out") else "")  # noqa: E731
        out.append(f"| {f['file']} | {mark(f)} | {mark(c) if c else '-'} |")
    out.append("")
    return "\n".join(out)


def write_report() -> Path | None:
    paths = {m: RESULTS / f"server_suite_{m}.json" for m in MODES}
    if not all(p.is_file() for p in paths.values()):
        return None
    data = {m: json.loads(p.read_text()) for m, p in paths.items()}
    out = RESULTS / "server_suite.md"
    out.write_text(report(data["native"], data["cortex"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, help="which server the suite starts")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("--junit", type=Path, default=None, help="write a junit XML of every file here")
    ap.add_argument("--files", nargs="*", default=None, help="test files under unit/ (default: all)")
    ap.add_argument("--model", type=Path, default=None, help="the GGUF every model reference maps to "
                    "(default: smollm2-135m-instruct from the registry cache)")
    ap.add_argument("--rerank-model", type=Path, default=None, help="the GGUF reranker references map to "
                    "(default: the test-model maker's reranker, Q4_0, made under bench/.models)")
    ap.add_argument("--native-bin", type=Path, default=None, help="native llama-server "
                    "(default: $LLAMA_SERVER_NATIVE, bench/.build-server/bin/llama-server here or in the main worktree)")
    ap.add_argument("--python", default=None, help="the interpreter pytest runs in "
                    "(default: bench/.venv-server-suite when present)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="-t for tests that set none")
    ap.add_argument("--file-timeout", type=int, default=1200, help="seconds per test file")
    ap.add_argument("--test-timeout", type=int, default=120, help="seconds per test phase")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default: bench/results/server_suite_<mode>.json)")
    ap.add_argument("--note", default=None, help="a remark on the run's conditions for the report")
    ap.add_argument("--merge", action="store_true", help="keep the results JSON's other files "
                    "(run the suite in chunks: --files A B --merge, then --files C --merge)")
    ap.add_argument("--no-save", action="store_true", help="print the summary only")
    ap.add_argument("--report", action="store_true", help="write bench/results/server_suite.md from both JSONs")
    ap.add_argument("-v", "--verbose", action="store_true", help="pytest's output on the terminal")
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = ap.parse_args(argv)

    if args.report:
        out = write_report()
        print(out or "both bench/results/server_suite_native.json and _cortex.json are needed")
        return 0 if out else 1
    if not args.mode:
        ap.error("--mode is required (or --report)")
    suite = find_suite_dir()
    if suite is None:
        print(f"server_suite: no llama.cpp server test suite ({SUITE_REL}); fill vendor/llama.cpp with "
              "python3 scripts/fetch_llama_cpp.py", file=sys.stderr)
        return 2
    model = args.model or find_model()
    if model is None or not model.is_file():
        print("server_suite: no model: pass --model or run cortex-llama pull smollm2-135m-instruct", file=sys.stderr)
        return 2
    native_bin = args.native_bin or find_native_bin()
    rerank_model = args.rerank_model or synthetic_reranker()
    if args.mode == "native" and native_bin is None:
        print("server_suite: no native llama-server; build it with python3 scripts/build_llama_server.py "
              "or pass --native-bin", file=sys.stderr)
        return 2
    python = args.python or suite_python()
    missing = missing_requirements(python)
    if missing:
        print(f"server_suite: {python} lacks the suite's requirements ({' '.join(missing)}); install them with\n"
              f"  python3 -m venv --system-site-packages {VENV_PYTHON.parent.parent}\n"
              f"  {VENV_PYTHON.parent}/pip install -r {suite / 'requirements.txt'}", file=sys.stderr)
        return 2
    files = args.files or sorted(p.name for p in (suite / "unit").glob("test_*.py"))
    files = [f if f.endswith(".py") else f + ".py" for f in (Path(f).name for f in files)]
    t0 = time.monotonic()
    out = args.out or RESULTS / f"server_suite_{args.mode}.json"
    previous = out.read_text() if args.merge and out.is_file() else None
    commit = (ROOT / "LLAMA_CPP_COMMIT").read_text().strip() if (ROOT / "LLAMA_CPP_COMMIT").is_file() else "?"

    def after_file(run: Run) -> None:
        if args.no_save:
            return
        if previous is not None:
            tmp = out.with_suffix(".previous.json")
            tmp.write_text(previous)
            run = merged(tmp, run)
            tmp.unlink()
        save(run, out, {"model": str(model), "rerank_model": str(rerank_model), "native_bin": str(native_bin), "suite": str(suite),
                        "threads": args.threads, "llama_cpp_commit": commit,
                        "files": [f.file for f in run.files], "k": args.k, "note": args.note})
        if args.out is None:
            write_report()

    run = run_suite(args.mode, files, k=args.k, junit=args.junit, per_file_timeout=args.file_timeout,
                    test_timeout=args.test_timeout, threads=args.threads, model=model, native_bin=native_bin,
                    python=python, suite=suite, verbose=args.verbose, extra=args.pytest_args,
                    rerank_model=rerank_model, after_file=after_file)
    print(summary_text(run))
    print(f"[{args.mode}] {time.monotonic() - t0:.0f} s")
    if not args.no_save:
        print(f"wrote {out}" + (" and bench/results/server_suite.md" if args.out is None and
                                 all((RESULTS / f"server_suite_{m}.json").is_file() for m in MODES) else ""))
    c = counts(run)
    return 0 if c.get("failed", 0) + c.get("error", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
