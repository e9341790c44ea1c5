"""The test-model maker writes valid, deterministic llama GGUF files."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from cortex_llama import Model
from cortex_llama.testmodel import PRESETS, TestModelSpec, make_test_model


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = make_test_model(tmp_path / "a.gguf", seed=3)
    b = make_test_model(tmp_path / "b.gguf", seed=3)
    c = make_test_model(tmp_path / "c.gguf", seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_shape_and_vocab(tiny: Model) -> None:
    spec = PRESETS["tiny"]
    assert tiny.architecture == "llama"
    assert tiny.n_vocab == spec.n_vocab
    assert tiny.n_embd == spec.n_embd
    assert tiny.n_layer == spec.n_layer
    assert tiny.n_head == spec.n_head
    assert tiny.n_head_kv == spec.n_head_kv
    assert tiny.n_ctx_train == spec.n_ctx
    v = tiny.vocab
    assert v.type == "spm"
    assert (v.text(0), v.text(1), v.text(2)) == ("<unk>", "<s>", "</s>")
    assert v.bos == 1 and v.eos == 2
    assert v.is_eog(2) and v.is_control(1)
    byte_tokens = [i for i in range(v.n_tokens) if v.text(i).startswith("<0x")]
    assert len(byte_tokens) == 256
    assert "im_start" in (tiny.chat_template() or "")


def test_custom_shape(tmp_path: Path) -> None:
    path = make_test_model(tmp_path / "m.gguf", TestModelSpec(n_vocab=300, n_layer=1), n_embd=32)
    with Model(path) as m:
        assert (m.n_vocab, m.n_layer, m.n_embd) == (300, 1, 32)


def test_bad_specs() -> None:
    with pytest.raises(ValueError, match="n_vocab"):
        TestModelSpec(n_vocab=100)
    with pytest.raises(ValueError, match="n_head"):
        TestModelSpec(n_embd=65)
    with pytest.raises(ValueError, match="preset"):
        make_test_model("/tmp/never.gguf", "huge")


def test_1b_preset_has_tinyllama_shape() -> None:
    s = PRESETS["1b"]
    assert (s.n_vocab, s.n_embd, s.n_ff, s.n_layer, s.n_head, s.n_head_kv) == (32000, 2048, 5632, 22, 32, 4)


def test_cli_make_test_model(tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    subprocess.run(["cortex-llama", "make-test-model", str(out), "--preset", "tiny"], check=True,
                   capture_output=True)
    with Model(out) as m:
        assert m.n_vocab == PRESETS["tiny"].n_vocab
