"""Reranking (``LLM.rerank``, ``serve --reranking`` with ``/rerank``): a synthetic
Qwen3-shaped reranker with a classification head (the test-model maker's
``ranking_head=True``), quantized to Q4_0; models without a head are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from cortex_llama import LLM, quantize
from cortex_llama.context import Context
from cortex_llama.model import Model
from cortex_llama.rerank import rerank_tokens
from cortex_llama.testmodel import RERANK_TEMPLATE, make_test_model

from .helpers import Server

QUERY = "where is the river"
TOL = 1e-2  # scores of one pair batched differently (Q4_0 rounds activations per batch)
DOCS = ["the river runs by the old mill", "cats sleep all day", "a bank of the river", "zzz"]


@pytest.fixture(scope="module")
def reranker(models_dir: Path) -> Path:
    f32 = make_test_model(models_dir / "reranker-f32.gguf", "small", ranking_head=True)
    out = models_dir / "reranker-q4_0.gguf"
    if not out.exists():
        quantize(f32, out, "q4_0")
    return out


@pytest.fixture(scope="module")
def llm(reranker: Path) -> Iterator[LLM]:
    with LLM(reranker, embeddings=True, pooling="rank", threads=2, n_seq_max=4, context_size=512) as m:
        yield m


def test_scores_are_the_heads_p_yes_one_pair_at_a_time_or_batched(llm: LLM, reranker: Path) -> None:
    results = llm.rerank(QUERY, DOCS)
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # the same pair alone, by hand: the rerank template, rank pooling, the head's first output
    model = llm.model
    toks = rerank_tokens(model, QUERY, DOCS[1])
    prompt = RERANK_TEMPLATE.replace("{query}", QUERY).replace("{document}", DOCS[1])
    assert toks == model.tokenize(prompt, add_special=False, parse_special=True).tolist()
    ctx = Context(model, embeddings=True, n_ctx=512, n_seq_max=1)
    assert ctx.pooling == "rank"  # the GGUF's own pooling
    batch = ctx.new_batch(len(toks))
    batch.add_many(toks, 0, 0, logits=True)
    ctx.decode(batch)
    yes_no = ctx.seq_embeddings(0)
    assert yes_no.shape == (2,) and abs(float(yes_no.sum()) - 1) < 1e-5
    by_index = {r.index: r for r in results}
    # a batch's make-up changes a quantized model's activation rounding a little
    assert abs(by_index[1].score - float(yes_no[0])) < TOL and by_index[1].tokens == len(toks)
    assert [r.index for r in llm.rerank(QUERY, DOCS, top_n=2)] == [r.index for r in results[:2]]


def test_bad_input_and_models_without_a_head(llm: LLM, small_q4_path: Path) -> None:
    with pytest.raises(ValueError, match="query"):
        llm.rerank("", DOCS)
    with pytest.raises(ValueError, match="documents"):
        llm.rerank(QUERY, [])
    with pytest.raises(ValueError, match="top_n"):
        llm.rerank(QUERY, DOCS, top_n=-1)
    plain = Model(small_q4_path)
    assert not plain.has_ranking_head
    with pytest.raises(ValueError, match="no ranking head"):
        Context(plain, embeddings=True, pooling="rank")
    plain.close()
    with pytest.raises(ValueError, match="no ranking head"):
        LLM(small_q4_path, embeddings=True, pooling="rank")


@pytest.mark.server
def test_rerank_routes_in_both_shapes(reranker: Path, llm: LLM, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    expected = {r.index: r.score for r in llm.rerank(QUERY, DOCS)}
    srv = Server(reranker, tmp_path / "server.log", "--reranking", "--parallel", "2", api_key=None)
    try:
        r = srv.post("/v1/rerank", {"model": "jina-reranker-v2", "query": QUERY, "documents": DOCS,
                                    "top_n": 3, "return_documents": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "jina-reranker-v2" and body["object"] == "list" and len(body["results"]) == 3
        for item in body["results"]:
            assert abs(item["relevance_score"] - expected[item["index"]]) < TOL
            assert item["document"] == {"text": DOCS[item["index"]]}
        assert body["usage"]["prompt_tokens"] > 0
        tei = srv.post("/rerank", {"query": QUERY, "texts": DOCS, "return_text": True}).json()
        assert [t["index"] for t in tei][:3] == [i["index"] for i in body["results"]]
        assert len(tei) == len(DOCS) and tei[0]["text"] == DOCS[tei[0]["index"]]
        assert np.allclose([t["score"] for t in tei], sorted(expected.values(), reverse=True), atol=TOL)
        for bad, param in (({"documents": DOCS}, "query"), ({"query": QUERY, "documents": []}, "documents")):
            r = srv.post("/reranking", bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    finally:
        assert srv.stop() == 0
    plain = Server(reranker, tmp_path / "plain.log", "--embeddings", api_key=None)
    try:
        r = plain.post("/rerank", {"query": QUERY, "documents": DOCS})
        assert r.status_code == 501 and "--reranking" in r.json()["error"]["message"]
    finally:
        assert plain.stop() == 0
