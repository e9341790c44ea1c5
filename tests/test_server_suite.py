"""A fast slice of llama-server's own test suite (llama.cpp's tools/server/tests),
run through bench/server_suite.py against ``cortex-llama serve`` (and against the
native llama-server when it is built): tokenize/detokenize and server start.

Skips when the vendored suite, its Python requirements (bench/.venv-server-suite,
see bench/server_suite.py), the registry's SmolLM2 model or, for the native run,
the native binary are missing. The whole suite: ``python3 bench/server_suite.py
--mode cortex`` (bench/results/server_suite.md has the baseline).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import server_suite  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.server]

#: tests that pass on native llama-server with SmolLM2 and do not depend on the model's text
SUBSET_FILES = ["test_tokenize.py", "test_basic.py"]
SUBSET = ["unit/test_tokenize.py::test_tokenize_detokenize", "unit/test_tokenize.py::test_tokenize_with_pieces",
          "unit/test_basic.py::test_server_start_simple"]
K = " or ".join(n.rsplit("::", 1)[1] for n in SUBSET)


def _requirements() -> None:
    if server_suite.find_suite_dir() is None:
        pytest.skip("vendor/llama.cpp has no tools/server/tests (python3 scripts/fetch_llama_cpp.py)")
    if server_suite.find_model() is None:
        pytest.skip("smollm2-135m-instruct is not in the model cache (cortex-llama pull smollm2-135m-instruct)")
    missing = server_suite.missing_requirements(server_suite.suite_python())
    if missing:
        pytest.skip(f"the suite's requirements are missing ({' '.join(missing)}); see bench/server_suite.py")


@pytest.mark.parametrize("mode", ["cortex", "native"])
def test_suite_subset_passes(mode: str, tmp_path: Path) -> None:
    _requirements()
    if mode == "native" and server_suite.find_native_bin() is None:
        pytest.skip("native llama-server is not built (python3 scripts/build_llama_server.py)")
    out = tmp_path / f"{mode}.json"
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "server_suite.py"), "--mode", mode,
                           "--files", *SUBSET_FILES, "-k", K, "--out", str(out), "--junit", str(junit),
                           "--file-timeout", "60", "--test-timeout", "30"],
                          capture_output=True, text=True, timeout=150)
    assert out.is_file(), proc.stdout + proc.stderr
    tests = json.loads(out.read_text())["tests"]
    outcomes = {n: t["outcome"] for n, t in tests.items()}
    assert outcomes == {n: "passed" for n in SUBSET}, proc.stdout[-3000:]
    assert proc.returncode == 0
    assert junit.read_text().count("<testcase") == len(SUBSET)


def test_launcher_maps_models_and_records_dropped_flags() -> None:
    """The launcher's argv mapping, without starting anything."""
    import server_suite_launcher as launcher

    argv = ["--port", "8123", "--temp", "0.8", "--seed", "42", "--host", "127.0.0.1", "--offline",
            "--hf-repo", "ggml-org/models", "--hf-file", "tinyllamas/stories260K.gguf", "--batch-size", "32",
            "--no-slots", "--alias", "tinyllama-2", "--ctx-size", "512", "--parallel", "2",
            "--n-predict", "64", "--no-jinja", "--reasoning-format", "nothink", "--seed", "-1"]
    p = launcher.parse(argv)
    assert p.has_model and not p.router and not p.mcp
    assert p.model_refs == [["--hf-repo", "ggml-org/models"], ["--hf-file", "tinyllamas/stories260K.gguf"]]
    cmd, dropped = launcher.cortex_argv(p, "python3", "/m.gguf", "2")
    assert cmd[:5] == ["python3", "-m", "cortex_llama", "serve", "/m.gguf"]
    joined = " ".join(cmd)
    for part in ("--port 8123", "--host 127.0.0.1", "--seed 42", "-b 32", "--model-alias tinyllama-2",
                 "-c 512", "-np 2", "-t 2"):
        assert part in joined
    # --temp, --no-slots, --n-predict and --no-jinja have serve equivalents now;
    # "nothink" is no --reasoning-format value and a negative seed means random
    assert [f.name for f in dropped] == ["--reasoning-format", "--seed"]
    native, dropped = launcher.native_argv(p, "/bin/llama-server", "/m.gguf", None)
    assert native[:3] == ["/bin/llama-server", "-m", "/m.gguf"] and "--hf-repo" not in native
    assert "--seed" in native and "-1" in native and dropped == []
    assert launcher.parse(["--port", "1", "--models-max", "2"]).router
    assert launcher.parse(["-m", "x", "--ui-mcp-proxy"]).mcp
    # the suite's reranker maps to the reranker model, the others do not
    assert launcher.is_reranker(launcher.parse(["-hfr", "ggml-org/models", "-hff",
                                                "jina-reranker-v1-tiny-en/ggml-model-f16.gguf"]))
    assert not launcher.is_reranker(p)
