"""LoRA adapters in the engine (``ModelConfig.lora``, ``GenerationParams.lora``):
per-request scales, steps grouped by scales, prefix reuse only between equal
scales, default scales changed at run time; on the Q4_0 synthetic model."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from cortex_llama import LLM, LlamaError
from cortex_llama.testmodel import make_test_lora

PROMPTS = ["The quick brown fox", "Once upon a time there was", "def main():", "A river of"]
N = 12


@pytest.fixture(scope="module")
def lora_path(models_dir: Path) -> Path:
    return make_test_lora(models_dir / "small-lora.gguf", "small", scale=2.0)


@pytest.fixture(scope="module")
def plain(small_q4_path: Path) -> list[list[int]]:
    with LLM(small_q4_path, threads=2, n_seq_max=1, context_size=256) as llm:
        return [llm.complete(p, temperature=0, max_tokens=N).tokens for p in PROMPTS]


@pytest.fixture(scope="module")
def adapted(small_q4_path: Path, lora_path: Path) -> list[list[int]]:
    with LLM(small_q4_path, threads=2, n_seq_max=1, context_size=256, lora=[lora_path]) as llm:
        return [llm.complete(p, temperature=0, max_tokens=N).tokens for p in PROMPTS]


@pytest.fixture()
def llm(small_q4_path: Path, lora_path: Path) -> Iterator[LLM]:
    with LLM(small_q4_path, threads=2, n_seq_max=4, context_size=256, lora=[(lora_path, 1.0)]) as m:
        yield m


def test_scale_zero_is_the_base_model_and_the_adapter_changes_output(
        llm: LLM, plain: list[list[int]], adapted: list[list[int]]) -> None:
    assert any(a != b for a, b in zip(plain, adapted))
    for prompt, base, tuned in zip(PROMPTS, plain, adapted):
        assert llm.complete(prompt, temperature=0, max_tokens=N, lora={0: 0.0}).tokens == base
        assert llm.complete(prompt, temperature=0, max_tokens=N).tokens == tuned
    assert [(i.id, i.scale) for i in llm.lora] == [(0, 1.0)]


def test_mixed_scales_at_once_each_equal_their_solo_run(
        llm: LLM, plain: list[list[int]], adapted: list[list[int]]) -> None:
    reqs = [llm.submit(p, temperature=0, max_tokens=N, lora={0: 0.0} if i % 2 else None)
            for i, p in enumerate(PROMPTS)]
    for i, r in enumerate(reqs):
        assert r.result(timeout=60).tokens == (plain[i] if i % 2 else adapted[i])


def test_cells_are_reused_only_with_the_same_scales(llm: LLM, plain: list[list[int]]) -> None:
    llm.complete(PROMPTS[0], temperature=0, max_tokens=N)
    other = llm.complete(PROMPTS[0], temperature=0, max_tokens=N, lora={0: 0.0})
    assert other.tokens == plain[0] and other.usage.cached_tokens == 0
    same = llm.complete(PROMPTS[0], temperature=0, max_tokens=N, lora={0: 0.0})
    assert same.usage.cached_tokens > 0 and same.tokens == plain[0]


def test_default_scales_change_and_bad_ids_are_refused(llm: LLM, small_q4_path: Path,
                                                      plain: list[list[int]]) -> None:
    llm.set_lora_scales({0: 0.0})
    assert llm.lora[0].scale == 0.0
    assert llm.complete(PROMPTS[1], temperature=0, max_tokens=N).tokens == plain[1]
    with pytest.raises(ValueError, match=r"adapter id 3 is not in \[0, 1\)"):
        llm.complete(PROMPTS[1], max_tokens=1, lora={3: 1.0})
    with pytest.raises(ValueError, match="must be a number"):
        llm.set_lora_scales({0: "big"})  # type: ignore[dict-item]
    with LLM(small_q4_path, threads=2, context_size=128) as bare:
        assert bare.lora == []
        with pytest.raises(ValueError, match="no LoRA adapters are loaded"):
            bare.complete(PROMPTS[1], max_tokens=1, lora={0: 1.0})
    with pytest.raises(LlamaError, match="missing.gguf"):
        LLM(small_q4_path, threads=2, context_size=128, lora=[small_q4_path.parent / "missing.gguf"])


@pytest.mark.server
def test_server_lora_routes_and_request_field(small_q4_path: Path, lora_path: Path, tmp_path: Path,
                                              plain: list[list[int]], adapted: list[list[int]]) -> None:
    pytest.importorskip("fastapi")
    from .helpers import Server

    srv = Server(small_q4_path, tmp_path / "server.log", "--lora", str(lora_path), "--parallel", "2",
                 "--ctx-size", "512", "--temp", "0", api_key=None)
    try:
        listed = srv.get("/lora-adapters").json()
        assert listed == [{"id": 0, "path": str(lora_path), "scale": 1.0, "task_name": "", "prompt_prefix": ""}]

        def tokens(lora: object = None) -> list[int]:
            body = {"prompt": PROMPTS[2], "n_predict": N, "return_tokens": True}
            if lora is not None:
                body["lora"] = lora
            r = srv.post("/completion", body)
            assert r.status_code == 200, r.text
            return list(r.json()["tokens"])

        assert tokens() == adapted[2]
        assert tokens([{"id": 0, "scale": 0.0}]) == plain[2]
        chat = srv.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            extra_body={"lora": [{"id": 0, "scale": 0.0}]})
        assert chat.choices[0].message.content is not None
        assert srv.post("/lora-adapters", [{"id": 0, "scale": 0.0}]).json() == {"success": True}
        assert tokens() == plain[2]
        for bad, param in (([{"id": 5, "scale": 1.0}], "lora"), ([{"id": "x"}], "lora[0].id"),
                           ([{"id": 0, "scale": "big"}], "lora[0].scale")):
            r = srv.post("/completion", {"prompt": "x", "n_predict": 1, "lora": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        r = srv.post("/lora-adapters", [{"id": 9, "scale": 1.0}])
        assert r.status_code == 400 and "adapter id 9" in r.json()["error"]["message"], r.text
    finally:
        assert srv.stop() == 0
