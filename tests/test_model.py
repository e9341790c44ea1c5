"""Loading models: metadata, options, and every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cortex_llama import ClosedError, Context, LlamaError, Model, ModelLoadError, quantize


def test_metadata(tiny: Model) -> None:
    assert tiny.n_params > 0 and tiny.size > 0
    assert "llama" in tiny.desc
    md = tiny.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.embedding_length"] == str(tiny.n_embd)
    assert tiny.meta("no.such.key") is None
    assert tiny.has_decoder and not tiny.has_encoder and not tiny.is_recurrent
    assert tiny.chat_template("no-such-name") is None


@pytest.mark.parametrize("kind", ["missing", "directory", "not_gguf", "empty", "truncated"])
def test_bad_model_files(kind: str, tmp_path: Path, tiny_path: Path) -> None:
    path = tmp_path / f"{kind}.gguf"
    if kind == "directory":
        path.mkdir()
    elif kind == "not_gguf":
        path.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(tiny_path.read_bytes()[: tiny_path.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as info:
        Model(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, LlamaError)


def test_truncated_header(tmp_path: Path, tiny_path: Path) -> None:
    path = tmp_path / "header.gguf"
    path.write_bytes(tiny_path.read_bytes()[:64])
    with pytest.raises(ModelLoadError, match="header.gguf"):
        Model(path)


def test_vocab_only(tiny_path: Path) -> None:
    with Model(tiny_path, vocab_only=True) as m:
        assert m.n_vocab == 512
        assert list(m.tokenize("ab", add_special=False))


def test_load_options(tiny_path: Path) -> None:
    with Model(tiny_path, use_mmap=False, kv_overrides={"llama.context_length": 1024}) as m:
        assert m.n_ctx_train == 1024
    with pytest.raises(TypeError, match="kv_overrides"):
        Model(tiny_path, kv_overrides={"x": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="split_mode"):
        Model(tiny_path, split_mode="diagonal")


def test_progress_callback_and_cancel(tiny_path: Path) -> None:
    seen: list[float] = []
    with Model(tiny_path, use_mmap=False, progress=seen.append):
        pass
    assert seen and seen[-1] == pytest.approx(1.0)
    with pytest.raises(ModelLoadError, match="cancelled"):
        Model(tiny_path, use_mmap=False, progress=lambda f: False)


def test_progress_callback_exception_is_reraised(tiny_path: Path) -> None:
    def boom(_f: float) -> bool:
        raise RuntimeError("stop loading")

    with pytest.raises(RuntimeError, match="stop loading"):
        Model(tiny_path, use_mmap=False, progress=boom)


def test_decode_gives_finite_logits(tiny: Model) -> None:
    with Context(tiny, n_ctx=128, n_threads=2) as ctx:
        batch = ctx.new_batch()
        batch.add_many(tiny.tokenize("The quick brown fox"), 0)
        ctx.decode(batch)
        logits = ctx.logits()
        assert logits.shape == (tiny.n_vocab,) and logits.dtype == np.float32
        assert np.isfinite(logits).all()


def test_quantize(tmp_path: Path, small_path: Path) -> None:
    out = quantize(small_path, tmp_path / "q8.gguf", "Q8_0")
    with Model(out) as m:
        assert "Q8_0" in m.desc
        assert m.size < small_path.stat().st_size
    with pytest.raises(ValueError, match="quantization type"):
        quantize(small_path, tmp_path / "x.gguf", "Q3_Z")
    with pytest.raises(ModelLoadError, match="nope.gguf"):
        quantize(tmp_path / "nope.gguf", tmp_path / "y.gguf")


def test_closed_model(tiny_path: Path) -> None:
    m = Model(tiny_path)
    m.close()
    m.close()
    with pytest.raises(ClosedError):
        _ = m.n_embd
    with pytest.raises(ClosedError):
        m.tokenize("x")
