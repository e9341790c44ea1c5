"""Images in chat: OpenAI-style content parts, LLM(mmproj=...), the engine prefilling
media chunks next to text-only requests, prefix reuse by image id (real libmtmd,
synthetic models and projectors)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest

from cortex_llama import LLM, Context, Model
from cortex_llama.content import has_media, split_media
from cortex_llama.errors import MediaError
from cortex_llama.multimodal import Bitmap, Projector, available
from cortex_llama.testmodel import make_test_model, make_test_projector

from .test_multimodal import chat_prompt, greedy, image, png_bytes, wav_bytes

pytestmark = pytest.mark.skipif(not available(), reason="this build has no libmtmd")


def data_url(arr: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(arr)).decode()


def user(*parts: object) -> list[dict[str, object]]:
    return [{"role": "user", "content": list(parts)}]


@pytest.fixture(scope="module")
def files(models_dir: Path) -> tuple[Path, Path]:
    model = make_test_model(models_dir / "tiny-f16.gguf", "tiny", dtype="f16")
    return model, make_test_projector(models_dir / "tiny-mmproj.gguf", "tiny")


@pytest.fixture(scope="module")
def llm(files: tuple[Path, Path]):
    model, mmproj = files
    with LLM(model, mmproj=mmproj, context_size=1024, n_seq_max=4, threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def proj(llm: LLM) -> Projector:
    assert llm.projector is not None
    return llm.projector


def native_greedy(model_path: Path, mmproj: Path, text: str, arrays: list[np.ndarray], n: int) -> list[int]:
    """Greedy tokens through the object layer alone (Projector.eval_chunks + decode_one)."""
    with Model(model_path) as model:
        p = Projector(model, mmproj, n_threads=2)
        with Context(model, n_ctx=1024, n_threads=2) as c:
            return greedy(p, c, p.tokenize(text, [Bitmap.from_array(a) for a in arrays]), n)


# -- content parts ---------------------------------------------------------------------
def test_split_media_forms(proj: Projector, tmp_path: Path) -> None:
    arr = image(20, 24, 5)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(arr))
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "A "},
            {"type": "image_url", "image_url": {"url": data_url(arr)}},
            {"type": "text", "text": " B "},
            {"type": "image_url", "image_url": str(path)},
            {"type": "image_url", "image_url": {"url": path.as_uri()}},
            arr,
            {"type": "image", "image": arr},
            Bitmap.from_array(arr),
            "C",
        ]},
    ]
    assert has_media(msgs) and not has_media(msgs[:1])
    flat, media = split_media(msgs, proj)
    m = proj.marker
    assert flat[0] == msgs[0]
    # llama-server's parts: llama.cpp's chat layer joins them (as for llama-server)
    assert flat[1]["content"] == [{"type": "text", "text": "A "}, *[{"type": "media_marker", "text": m}],
                                  {"type": "text", "text": " B "}, *[{"type": "media_marker", "text": m}] * 5,
                                  {"type": "text", "text": "C"}]
    assert len(media) == 6
    assert all(np.array_equal(b.to_array(), arr) for b in media)
    assert len({b.id for b in media[3:]}) == 1  # arrays get content ids too


@pytest.mark.parametrize("part, exc, match", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, MediaError, "remote"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, MediaError, "not an image"),
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawtext"}}, MediaError, "base64"),
    ({"type": "image_url", "image_url": {}}, MediaError, "url"),
    ({"type": "video", "video": "x"}, ValueError, "unknown type 'video'"),
    ({"type": "text"}, ValueError, "text"),
    ({"type": "text", "text": "<__media__>"}, MediaError, "marker"),
    ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, MediaError, "audio"),
    (12345, MediaError, "int"),
])
def test_bad_parts(proj: Projector, part: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        split_media(user({"type": "text", "text": "hi"}, part), proj)


def test_audio_part_to_a_vision_only_projector(proj: Projector) -> None:
    wav = base64.b64encode(wav_bytes(np.zeros(8000, np.float32))).decode()
    with pytest.raises(MediaError, match="audio.*images only"):
        split_media(user({"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}), proj)


def test_missing_file(proj: Projector, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        split_media(user({"type": "image_url", "image_url": {"url": str(tmp_path / "no.png")}}), proj)


def test_pil_part(proj: Projector) -> None:
    Image = pytest.importorskip("PIL.Image")
    arr = image(10, 12)
    _, media = split_media(user("look", Image.fromarray(arr)), proj)
    assert np.array_equal(media[0].to_array(), arr)


# -- LLM -------------------------------------------------------------------------------
def test_capabilities(llm: LLM) -> None:
    assert "vision" in llm.capabilities and "audio" not in llm.capabilities


def test_image_part_without_projector(tiny_path: Path) -> None:
    with LLM(tiny_path, context_size=256, threads=1, n_seq_max=1) as plain:
        assert plain.projector is None
        with pytest.raises(MediaError, match="no projector.*mmproj"):
            plain.chat(user("what is it?", {"type": "image_url", "image_url": {"url": data_url(image(8, 8))}}))
        # text-only content parts still work without a projector
        assert plain.chat(user({"type": "text", "text": "hi"}), max_tokens=2, temperature=0).usage.completion_tokens


def test_chat_with_an_image_equals_the_object_layer(llm: LLM, files: tuple[Path, Path]) -> None:
    arr = image(40, 30, 11)
    c = llm.chat(user("Describe ", {"type": "image_url", "image_url": {"url": data_url(arr)}}, " please."),
                 max_tokens=16, temperature=0)
    want = native_greedy(*files, chat_prompt(f"Describe {llm.projector.marker} please."), [arr], 16)
    assert c.tokens == want and len(want) > 0
    assert c.usage.prompt_tokens > 16  # the image's 16 embeddings count as prompt tokens


def test_two_images_in_one_message(llm: LLM, files: tuple[Path, Path]) -> None:
    a, b = image(32, 32, 1), image(16, 48, 2)
    c = llm.chat(user("Compare ", a, " and ", b, "."), max_tokens=12, temperature=0)
    m = llm.projector.marker
    assert c.tokens == native_greedy(*files, chat_prompt(f"Compare {m} and {m}."), [a, b], 12)


def test_image_request_batched_with_text_requests(llm: LLM) -> None:
    msgs = [user("What is this? ", image(32, 32, 21)),
            [{"role": "user", "content": "Tell me a story."}],
            user("And this? ", image(50, 60, 22)),
            [{"role": "user", "content": "Count to ten."}]]
    solo = [llm.chat(m, max_tokens=12, temperature=0).tokens for m in msgs]

    async def together() -> list[list[int]]:
        done = await asyncio.gather(*(llm.achat(m, max_tokens=12, temperature=0) for m in msgs))
        return [c.tokens for c in done]

    before = llm.metrics()["batched_decodes_total"]
    assert asyncio.run(together()) == solo
    assert llm.metrics()["batched_decodes_total"] > before


def test_prefix_reuse_counts_the_image_by_its_id(llm: LLM) -> None:
    arr = image(32, 32, 31)
    first = llm.chat(user("Look: ", arr, " What?"), max_tokens=4, temperature=0)
    again = llm.chat(user("Look: ", arr.copy(), " What?"), max_tokens=4, temperature=0)
    assert again.tokens == first.tokens
    assert again.usage.cached_tokens >= first.usage.prompt_tokens - 1  # the image too
    other = llm.chat(user("Look: ", image(32, 32, 32), " What?"), max_tokens=4, temperature=0)
    # the cached prefix stops where the other image starts
    assert 0 < other.usage.cached_tokens < first.usage.prompt_tokens - 16


def test_stream_chat_with_an_image(llm: LLM) -> None:
    msgs = user("Say something about ", image(32, 32, 41))
    text = "".join(d.content for d in llm.stream_chat(msgs, max_tokens=10, temperature=0))
    assert text == llm.chat(msgs, max_tokens=10, temperature=0).text


def test_prompt_too_long_with_images(files: tuple[Path, Path]) -> None:
    with LLM(files[0], mmproj=files[1], context_size=32, threads=1, n_seq_max=1) as small:
        with pytest.raises(ValueError, match="image/audio embeddings"):
            small.chat(user(*[image(8, 8, i) for i in range(small.context.n_ctx // 16 + 1)], "c"))


def test_quantized_model(small_q4_path: Path, models_dir: Path) -> None:
    mmproj = make_test_projector(models_dir / "small-mmproj-f32.gguf", "small")
    arr = image(48, 40, 51)
    with LLM(small_q4_path, mmproj=mmproj, context_size=512, threads=2, n_seq_max=2) as q:
        got = q.chat(user("What is shown? ", arr), max_tokens=10, temperature=0).tokens
        m = q.projector.marker
    assert got == native_greedy(small_q4_path, mmproj, chat_prompt(f"What is shown? {m}"), [arr], 10)


# -- command line ----------------------------------------------------------------------
def test_cli_run_with_an_image(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cortex_llama import cli

    img = tmp_path / "x.png"
    arr = image(30, 40, 61)
    img.write_bytes(png_bytes(arr))
    args = [str(files[0]), "--mmproj", str(files[1]), "--image", str(img), "-n", "8", "--temp", "0",
            "-t", "2", "-c", "512"]
    assert cli.main(["run", *args, "Describe.", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    m = "<__media__>"
    assert out["tokens"] == native_greedy(*files, chat_prompt(f"{m}Describe."), [arr], 8)
    assert cli.main(["run", str(files[0]), "--image", str(img), "hi"]) != 0  # no --mmproj
    assert "--mmproj" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert cli.main(["run", *args[:3], "--image", str(bad), "-n", "2", "x"]) == 1
    assert "not an image" in capsys.readouterr().err
