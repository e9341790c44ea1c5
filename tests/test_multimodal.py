"""Images in through libmtmd: Projector, Bitmap, chunking and evaluation on synthetic
text models with random-weight LLaVA-style projectors (no downloads, no mocks)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest

from cortex_llama import Batch, ClosedError, Context, ModelLoadError, Model
from cortex_llama.errors import MediaError
from cortex_llama.multimodal import Bitmap, Projector, available
from cortex_llama.testmodel import make_test_audio_projector, make_test_projector

from .conftest import ROOT

pytestmark = pytest.mark.skipif(not available(), reason="this build has no libmtmd")

MTMD_CLI = Path(os.environ.get("CORTEX_LLAMA_MTMD_CLI", ROOT / "bench" / ".build-mtmd" / "bin" / "llama-mtmd-cli"))
N_IMAGE_TOKENS = 16  # make_test_projector's default: 32 px images, 8 px patches


def png_bytes(rgb: np.ndarray) -> bytes:
    """A minimal RGB8 PNG of ``rgb`` (HxWx3 uint8), written with zlib only."""
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def chat_prompt(text: str) -> str:
    """The ChatML turn llama-mtmd-cli renders for one user message (test models' template)."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def greedy(proj: Projector, ctx: Context, chunks, n: int, seq_id: int = 0) -> list[int]:
    pos = proj.eval_chunks(ctx, chunks, 0, seq_id)
    vocab = proj.model.vocab
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(ctx.logits()))
        if vocab.is_eog(tok):
            break
        out.append(tok)
        ctx.decode_one(tok, pos, seq_id)
        pos += 1
    return out


@pytest.fixture(scope="session")
def tiny_mmproj_path(models_dir: Path) -> Path:
    return make_test_projector(models_dir / "tiny-mmproj.gguf", "tiny")


@pytest.fixture(scope="session")
def small_mmproj_path(models_dir: Path) -> Path:
    return make_test_projector(models_dir / "small-mmproj.gguf", "small", dtype="f16")


@pytest.fixture(scope="module")
def f16_model(models_dir: Path) -> Model:
    from cortex_llama.testmodel import make_test_model

    return Model(make_test_model(models_dir / "tiny-f16.gguf", "tiny", dtype="f16"))


@pytest.fixture(scope="module")
def proj(f16_model: Model, tiny_mmproj_path: Path) -> Projector:
    return Projector(f16_model, tiny_mmproj_path, n_threads=2)


@pytest.fixture()
def mctx(f16_model: Model):
    with Context(f16_model, n_ctx=512, n_batch=512, n_seq_max=2, n_threads=2) as c:
        yield c


# -- projector -------------------------------------------------------------------------
def test_projector_properties(proj: Projector) -> None:
    assert proj.supports_vision and not proj.supports_audio
    assert proj.audio_sample_rate is None
    assert proj.marker == "<__media__>"
    assert not proj.uses_mrope
    assert "vision" in repr(proj)


def test_custom_marker(f16_model: Model, tiny_mmproj_path: Path) -> None:
    with Projector(f16_model, tiny_mmproj_path, n_threads=1, media_marker="<img>") as p:
        assert p.marker == "<img>"
        chunks = p.tokenize("a <img> b", [Bitmap.from_array(image(32, 32))])
        assert [c.type for c in chunks] == ["text", "image", "text"]


def test_projector_closes_with_its_model(tiny_path: Path, tiny_mmproj_path: Path) -> None:
    model = Model(tiny_path)
    p = Projector(model, tiny_mmproj_path, n_threads=1)
    model.close()
    assert p.closed
    with pytest.raises(ClosedError):
        p.tokenize("x")
    with pytest.raises(ClosedError):
        Projector(model, tiny_mmproj_path)


def test_mmproj_for_another_text_model_is_refused(f16_model: Model, tmp_path: Path) -> None:
    wrong = make_test_projector(tmp_path / "wide.gguf", "tiny", text_n_embd=128)
    with pytest.raises(ModelLoadError, match=r"n_embd = 64.*n_embd = 128|mismatch"):
        Projector(f16_model, wrong, n_threads=1)


@pytest.mark.parametrize("content, match", [(None, "not found"), (b"not a gguf file", "not a GGUF")])
def test_bad_mmproj_files(f16_model: Model, tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "mmproj.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        Projector(f16_model, path)


def test_text_model_given_as_mmproj_is_refused(f16_model: Model, tiny_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="projector"):
        Projector(f16_model, tiny_path, n_threads=1)


# -- bitmaps ---------------------------------------------------------------------------
def test_bitmap_from_array() -> None:
    arr = image(20, 30)
    bm = Bitmap.from_array(arr)
    assert (bm.width, bm.height, bm.is_audio, bm.n_bytes) == (30, 20, False, 20 * 30 * 3)
    assert np.array_equal(bm.to_array(), arr)
    assert bm.id == Bitmap.from_array(arr.copy()).id != Bitmap.from_array(image(20, 30, 1)).id
    gray = Bitmap.from_array(arr[:, :, 0])
    assert np.array_equal(gray.to_array()[:, :, 2], arr[:, :, 0])
    rgba = Bitmap.from_array(np.dstack([arr, np.full((20, 30), 255, np.uint8)]))
    assert np.array_equal(rgba.to_array(), arr)
    bm.close()
    with pytest.raises(ClosedError):
        bm.width


@pytest.mark.parametrize("bad, exc", [
    (np.zeros((4, 4, 3), np.float32), TypeError),
    (np.zeros((4, 4, 2), np.uint8), ValueError),
    (np.zeros((0, 4, 3), np.uint8), ValueError),
    (np.zeros((2, 2, 2, 3), np.uint8), ValueError),
])
def test_bitmap_bad_arrays(bad: np.ndarray, exc: type) -> None:
    with pytest.raises(exc):
        Bitmap.from_array(bad)


def test_bitmap_from_png_file_and_bytes(proj: Projector, tmp_path: Path) -> None:
    arr = image(24, 40)
    data = png_bytes(arr)
    path = tmp_path / "img.png"
    path.write_bytes(data)
    for bm in (Bitmap.from_file(proj, path), proj.load(data), proj.load(str(path))):
        assert (bm.width, bm.height) == (40, 24)
        assert np.array_equal(bm.to_array(), arr)
        assert bm.id is not None and len(bm.id) == 64


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n garbage", b"hello, world" * 10, bytes(range(256))])
def test_corrupt_image_raises(proj: Projector, data: bytes) -> None:
    with pytest.raises(MediaError, match="not an image"):
        proj.load(data)


def test_empty_and_missing_media(proj: Projector, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="empty"):
        proj.load(b"")
    with pytest.raises(FileNotFoundError):
        proj.load(tmp_path / "nope.png")


def test_audio_to_a_vision_only_projector(proj: Projector) -> None:
    tone = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    with pytest.raises(MediaError, match="audio"):
        proj.load(wav_bytes(tone))
    clip = Bitmap.from_pcm(tone)
    assert clip.is_audio and clip.width == 16000
    with pytest.raises(MediaError, match="audio.*images only"):
        proj.tokenize(f"listen {proj.marker}", [clip])


def test_bad_pcm() -> None:
    with pytest.raises(ValueError):
        Bitmap.from_pcm(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        Bitmap.from_pcm([])
    with pytest.raises(ValueError):
        Bitmap.from_pcm([0.0, float("nan")])


# -- chunking --------------------------------------------------------------------------
def test_tokenize_into_chunks(proj: Projector) -> None:
    bm = Bitmap.from_array(image(32, 32))
    chunks = proj.tokenize(chat_prompt(f"Look: {proj.marker} What is it?"), [bm])
    assert [c.type for c in chunks] == ["text", "image", "text"]
    text0, img, text1 = chunks
    assert img.n_tokens == img.n_pos == N_IMAGE_TOKENS and img.id == bm.id and img.is_media
    assert text0.id is None and len(text0.tokens) == text0.n_tokens > 0
    assert text0.tokens[0] == proj.model.vocab.bos
    assert img.tokens.size == 0
    assert chunks.n_tokens == chunks.n_pos == sum(c.n_tokens for c in chunks)
    assert chunks[-1].index == 2
    with pytest.raises(IndexError):
        chunks[3]
    plain = proj.tokenize("no media here")
    assert [c.type for c in plain] == ["text"]


def test_marker_and_media_counts_must_match(proj: Projector) -> None:
    bm = Bitmap.from_array(image(32, 32))
    with pytest.raises(MediaError, match="2 media markers.*1 images"):
        proj.tokenize(f"{proj.marker} and {proj.marker}", [bm])
    with pytest.raises(MediaError, match="0 media markers.*1 images"):
        proj.tokenize("no marker", [bm])
    with pytest.raises(TypeError):
        proj.tokenize(f"{proj.marker}", [image(32, 32)])  # type: ignore[list-item]


# -- evaluation ------------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(8, 8), (17, 31), (32, 32), (64, 64), (100, 240)])
def test_images_of_several_sizes(proj: Projector, mctx: Context, h: int, w: int) -> None:
    chunks = proj.tokenize(chat_prompt(f"{proj.marker}Describe."), [Bitmap.from_array(image(h, w))])
    assert chunks[1].n_tokens == N_IMAGE_TOKENS  # resized to the projector's 32 px
    n_past = proj.eval_chunks(mctx, chunks, 0, 0)
    assert n_past == chunks.n_pos == mctx.seq_pos_max(0) + 1
    assert np.isfinite(mctx.logits()).all()


def test_the_image_matters_and_is_deterministic(proj: Projector, mctx: Context) -> None:
    def run(arr: np.ndarray) -> np.ndarray:
        mctx.clear()
        proj.eval_chunks(mctx, proj.tokenize(chat_prompt(f"{proj.marker}Hi"), [Bitmap.from_array(arr)]))
        return mctx.logits_copy()

    a, b, a2 = run(image(32, 32, 1)), run(image(32, 32, 2)), run(image(32, 32, 1))
    assert np.array_equal(a, a2)
    assert not np.allclose(a, b)


def test_encode_then_decode_embeddings_equals_the_helper(proj: Projector, mctx: Context) -> None:
    """The path an engine takes (encode, decode the embeddings in its own batch) gives the
    logits of mtmd's helper."""
    chunks = proj.tokenize(chat_prompt(f"{proj.marker}Tell me."), [Bitmap.from_array(image(40, 30))])
    proj.eval_chunks(mctx, chunks, 0, 0)
    want = mctx.logits_copy()

    pos = 0
    text0, img, text1 = chunks
    batch = mctx.new_batch()
    batch.add_many(text0.tokens, pos, 1, logits=False)
    mctx.decode(batch)
    pos += text0.n_tokens
    emb = proj.encode(img)
    assert emb.shape == (N_IMAGE_TOKENS, proj.model.n_embd)
    eb = Batch(len(emb), 2, embd=emb.shape[1])
    for i, row in enumerate(emb):
        eb.add_embd(row, pos + i, 1, logits=False)
    mctx.decode(eb)
    pos += img.n_pos
    batch.clear()
    batch.add_many(text1.tokens, pos, 1, logits="last")
    mctx.decode(batch)
    np.testing.assert_allclose(mctx.logits(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="text"):
        proj.encode(text0)


def test_two_images_in_one_message(proj: Projector, mctx: Context) -> None:
    a, b = Bitmap.from_array(image(32, 32, 3)), Bitmap.from_array(image(50, 20, 4))
    chunks = proj.tokenize(chat_prompt(f"First {proj.marker} then {proj.marker}. Compare."), [a, b])
    assert [c.type for c in chunks] == ["text", "image", "text", "image", "text"]
    assert [c.id for c in chunks if c.is_media] == [a.id, b.id]
    toks = greedy(proj, mctx, chunks, 8)
    mctx.clear()
    swapped = proj.tokenize(chat_prompt(f"First {proj.marker} then {proj.marker}. Compare."), [b, a])
    proj.eval_chunks(mctx, swapped)
    assert len(toks) > 0 and np.isfinite(mctx.logits()).all()


def test_eval_checks_its_arguments(proj: Projector, mctx: Context, tiny: Model) -> None:
    chunks = proj.tokenize(chat_prompt(f"{proj.marker}x"), [Bitmap.from_array(image(32, 32))])
    with pytest.raises(ValueError, match="negative"):
        proj.eval_chunks(mctx, chunks, -1)
    with pytest.raises(ValueError, match="sequence id"):
        proj.eval_chunks(mctx, chunks, 0, 5)
    with pytest.raises(ValueError, match="n_batch"):
        proj.eval_chunks(mctx, chunks, 0, 0, n_batch=100000)
    with pytest.raises(ValueError, match="n_ctx"):
        proj.eval_chunks(mctx, chunks, 500)
    with Context(tiny, n_ctx=128, n_threads=1) as other:
        with pytest.raises(ValueError, match="another model"):
            proj.eval_chunks(other, chunks)


def test_small_batches_equal_one_batch(proj: Projector, mctx: Context) -> None:
    chunks = proj.tokenize(chat_prompt(f"{proj.marker}Describe it."), [Bitmap.from_array(image(32, 32, 9))])
    proj.eval_chunks(mctx, chunks, 0, 0)
    want = mctx.logits_copy()
    mctx.clear()
    proj.eval_chunks(mctx, chunks, 0, 0, n_batch=5)
    np.testing.assert_allclose(mctx.logits(), want, rtol=1e-4, atol=1e-4)


def test_quantized_text_model(small_q4_path: Path, small_mmproj_path: Path) -> None:
    with Model(small_q4_path) as model:
        p = Projector(model, small_mmproj_path, n_threads=2)
        with Context(model, n_ctx=256, n_threads=2) as c:
            chunks = p.tokenize(chat_prompt(f"{p.marker}What is this?"), [Bitmap.from_array(image(48, 48))])
            first = greedy(p, c, chunks, 6)
            c.clear()
            assert greedy(p, c, chunks, 6) == first and len(first) > 0


def test_pil_image(proj: Projector) -> None:
    Image = pytest.importorskip("PIL.Image")
    arr = image(16, 16)
    bm = Bitmap.from_array(np.asarray(Image.fromarray(arr)))
    assert np.array_equal(bm.to_array(), arr)


# -- audio -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_proj(f16_model: Model, models_dir: Path) -> Projector:
    return Projector(f16_model, make_test_audio_projector(models_dir / "tiny-audio.gguf", "tiny"),
                     n_threads=2)


def test_audio_projector(audio_proj: Projector, f16_model: Model) -> None:
    assert audio_proj.supports_audio and not audio_proj.supports_vision
    assert audio_proj.audio_sample_rate == 16000
    tone = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 0.3).astype(np.float32)
    from_wav = audio_proj.load(wav_bytes(tone))
    assert from_wav.is_audio and from_wav.width == 16000
    chunks = audio_proj.tokenize(chat_prompt(f"Listen: {audio_proj.marker}"), [Bitmap.from_pcm(tone)])
    assert [c.type for c in chunks] == ["text", "audio", "text"]
    assert chunks[1].n_tokens == 375  # 30 s window, 1500 frames stacked by 4
    with Context(f16_model, n_ctx=1024, n_threads=2) as c:
        assert audio_proj.eval_chunks(c, chunks) == chunks.n_pos
        assert np.isfinite(c.logits()).all()
    with pytest.raises(MediaError, match="image.*audio only"):
        audio_proj.tokenize(audio_proj.marker, [Bitmap.from_array(image(32, 32))])


# -- parity with llama.cpp's own llama-mtmd-cli ----------------------------------------
# Build it once (minutes): cmake -S vendor/llama.cpp -B bench/.build-mtmd -DLLAMA_BUILD_TOOLS=ON
#   -DLLAMA_BUILD_COMMON=ON && cmake --build bench/.build-mtmd --target llama-mtmd-cli
@pytest.mark.skipif(not MTMD_CLI.is_file(), reason=f"no native llama-mtmd-cli at {MTMD_CLI}")
@pytest.mark.parametrize("which", ["f16", "q4_0"])
def test_greedy_equals_native_mtmd_cli(which: str, models_dir: Path, tiny_mmproj_path: Path,
                                        small_q4_path: Path, small_mmproj_path: Path,
                                        tmp_path: Path) -> None:
    from cortex_llama.testmodel import make_test_model

    if which == "f16":
        model_path = make_test_model(models_dir / "tiny-f16.gguf", "tiny", dtype="f16")
        mmproj = tiny_mmproj_path
    else:
        model_path, mmproj = small_q4_path, small_mmproj_path
    n = 24
    img = tmp_path / "img.png"
    img.write_bytes(png_bytes(image(45, 60, 7)))
    out = subprocess.run(
        [str(MTMD_CLI), "-m", str(model_path), "--mmproj", str(mmproj), "--image", str(img),
         "-p", "Describe the image.", "-n", str(n), "--temp", "0", "-t", "2", "-c", "512",
         "--no-warmup", "--jinja"],
        capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    native = out.stdout.strip(b"\n")

    with Model(model_path) as model:
        p = Projector(model, mmproj, n_threads=2)
        with Context(model, n_ctx=512, n_threads=2) as c:
            chunks = p.tokenize(chat_prompt(f"{p.marker}Describe the image."), [p.load(img)])
            toks = greedy(p, c, chunks, n)
            ours = b"".join(model.vocab.token_to_piece(t, special=True) for t in toks)
    assert ours.strip(b"\n") == native, (ours, native)
