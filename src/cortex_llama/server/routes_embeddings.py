"""Embeddings: OpenAI's ``/v1/embeddings`` (also ``/embeddings``) and llama-server's
native ``/embedding``.

``input`` (or llama-server's ``content``) takes every shape llama-server reads: a
string, token ids (``[12, 34, 56]``), ids and strings mixed in one list, an
object ``{"prompt_string": ...}`` or ``{"content": [parts]}`` (text parts), or a
list of those (one embedding each). A body with ``content`` instead of ``input``,
and every ``/embedding`` body, is answered in llama-server's native shape
``[{"index": i, "embedding": [[...]]}]``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Union

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .errors import APIError, from_exception
from .schemas import ERROR_RESPONSES, Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from .state import ServerState, get_state

__all__ = ["router", "embedding_inputs"]

router = APIRouter()

_PROMPT_STRING = "prompt_string"
_MULTIMODAL = "multimodal_data"


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parts_text(parts: Any, where: str) -> str:
    """The joined text of a content-part list. Raises :class:`APIError` (400) for
    a list that is not one, a part that is not an object, or a media part."""
    if not isinstance(parts, list):
        raise APIError(400, f"{where}: must be a list of content parts", param=where, code="invalid_value")
    out = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type", "text"), str):
            raise APIError(400, f"{where}[{j}]: must be a content part object", param=f"{where}[{j}]",
                           code="invalid_value")
        kind = part.get("type", "text")
        if kind != "text":
            raise APIError(400, f"{where}[{j}]: content parts of type {kind!r} are not supported for "
                                "embeddings (text parts only)", param=f"{where}[{j}]", code="unsupported_content")
        if not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}[{j}].text: a text part needs a string 'text'",
                           param=f"{where}[{j}].text", code="invalid_value")
        out.append(part["text"])
    return "".join(out)


def _entry_tokens(state: ServerState, entry: Any, where: str) -> list[int]:
    """The tokens of one input entry (text tokenized as ``LLM.embed`` does; ids
    checked against the vocabulary). Raises :class:`APIError` (400) naming
    ``where``, the bad id and the vocabulary size."""
    model = state.llm.model
    if isinstance(entry, dict):
        if "content" in entry:
            entry = _parts_text(entry["content"], f"{where}.content")
        elif _PROMPT_STRING in entry:
            if entry.get(_MULTIMODAL):
                raise APIError(400, f"{where}.{_MULTIMODAL}: media are not supported for embeddings",
                               param=f"{where}.{_MULTIMODAL}", code="unsupported_content")
            entry = entry[_PROMPT_STRING]
            if not isinstance(entry, str):
                raise APIError(400, f"{where}.{_PROMPT_STRING}: must be a string",
                               param=f"{where}.{_PROMPT_STRING}", code="invalid_value")
        else:
            raise APIError(400, f"{where}: an object entry needs 'content' (a list of parts) or "
                                f"{_PROMPT_STRING!r}", param=where, code="invalid_value")
    if isinstance(entry, str):
        toks = [int(t) for t in model.tokenize(entry)] if entry else []
    elif isinstance(entry, list) and all(_is_id(x) or isinstance(x, str) for x in entry):
        toks = []
        for x in entry:
            toks += [int(t) for t in model.tokenize(x, add_special=not toks)] if isinstance(x, str) else [x]
    else:
        raise APIError(400, f"{where}: must be a string, a list of token ids (and strings), or an object "
                            f"with 'content' or {_PROMPT_STRING!r}", param=where, code="invalid_value")
    if not toks:
        raise APIError(400, f"{where}: must not be empty", param=where, code="invalid_value")
    n_vocab = model.n_vocab
    bad = next((t for t in toks if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise APIError(400, f"{where}: token id {bad} is outside the vocabulary [0, {n_vocab}) "
                            f"(vocabulary size {n_vocab})", param=where, code="invalid_value")
    limit = state.llm.config.batch_size
    if len(toks) > limit:
        raise APIError(400, f"{where}: {len(toks)} tokens, more than the batch size {limit} an embedding "
                            "is computed in (--batch-size)", param=where, code="invalid_value")
    return toks


def embedding_inputs(state: ServerState, raw: Any, field: str) -> list[list[int]]:
    """The token lists of ``input`` (one per embedding): a list holding a token id
    is one entry, any other list a list of entries. Raises :class:`APIError` (400)
    naming ``field`` or ``field[i]``."""
    if isinstance(raw, list) and not any(_is_id(x) for x in raw):
        if not raw:
            raise APIError(400, f"{field}: must not be empty", param=field, code="invalid_value")
        return [_entry_tokens(state, e, f"{field}[{i}]") for i, e in enumerate(raw)]
    return [_entry_tokens(state, raw, field)]


def _shorten(vecs: np.ndarray, dimensions: int | None) -> np.ndarray:
    if dimensions is None:
        return vecs
    if dimensions > vecs.shape[1]:
        raise APIError(400, f"dimensions: {dimensions} is more than the model's {vecs.shape[1]}",
                       param="dimensions", code="invalid_value")
    vecs = vecs[:, :dimensions]
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms == 0, 1, norms)


async def _embed(state: ServerState, body: EmbeddingRequest, per_token: bool = False
                 ) -> tuple[list[np.ndarray], int, str]:
    """(vectors, prompt tokens, the field read) of a request: unit vectors, one per
    input, or with ``per_token`` (``--pooling none``) each input's raw token vectors.
    Raises :class:`APIError`: 400 when embeddings are off or naming the bad input."""
    llm = state.llm
    if not llm.config.embeddings:
        raise APIError(400, "embeddings are disabled on this server (start it with --embeddings)",
                       code="embeddings_disabled")
    field = "input" if body.input is not None else "content"
    raw = body.input if body.input is not None else body.content
    try:
        prompts = await asyncio.to_thread(embedding_inputs, state, raw, field)
        if per_token:
            vecs = await asyncio.to_thread(llm.embed_tokens, prompts)
        else:
            vecs = list(np.atleast_2d(await llm.aembed(prompts)))
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param=field) from None
    return vecs, sum(len(p) for p in prompts), field


def _native(vecs: list[np.ndarray]) -> JSONResponse:
    """llama-server's native body: per input, its pooled vector in a list (or, with
    ``--pooling none``, the vector of each of its tokens)."""
    return JSONResponse([{"index": i, "embedding": np.atleast_2d(v).astype(float).tolist()}
                         for i, v in enumerate(vecs)])


def _pooling_none(state: ServerState) -> bool:
    return state.llm.config.pooling == "none"


async def embeddings(body: EmbeddingRequest, state: ServerState = Depends(get_state)) -> Any:
    """Normalized embeddings of ``input`` (OpenAI's body), or of llama-server's
    ``content`` (its native body). Raises :class:`APIError` (400) naming the field,
    or for OpenAI's body on a server with ``--pooling none`` (one vector per token
    has no OpenAI shape; llama-server's 400 too)."""
    if body.input is not None and _pooling_none(state):
        raise APIError(400, "input: OpenAI's embeddings need pooled vectors, and this server runs with "
                            "--pooling none (use /embedding, or start it with --pooling mean|cls|last)",
                       param="input", code="pooling_not_supported")
    vecs, n_tokens, field = await _embed(state, body)
    if field == "content":
        return _native(vecs)
    data = []
    for i, v in enumerate(_shorten(np.stack(vecs), body.dimensions)):
        emb: Union[list[float], str]
        if body.encoding_format == "base64":
            emb = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        else:
            emb = [float(x) for x in v]
        data.append(Embedding(index=i, embedding=emb))
    return EmbeddingResponse(data=data, model=state.model_id,
                             usage=EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens))


async def embedding_native(body: EmbeddingRequest, state: ServerState = Depends(get_state)) -> Any:
    """llama-server's ``/embedding``: ``[{"index": i, "embedding": [[...]]}]`` for
    ``content`` or ``input`` (under ``--pooling none``, one raw vector per token).
    Raises :class:`APIError` (400) naming the field."""
    vecs, _, _ = await _embed(state, body, per_token=_pooling_none(state))
    return _native(vecs)


async def embeddings_unprefixed(body: EmbeddingRequest, state: ServerState = Depends(get_state)) -> Any:
    """``/embeddings``: OpenAI's body, except under ``--pooling none``, where it is
    llama-server's native one (one raw vector per token), as there. Raises like
    :func:`embeddings`."""
    if _pooling_none(state):
        return await embedding_native(body, state)
    return await embeddings(body, state)


router.add_api_route("/v1/embeddings", embeddings, methods=["POST"], response_model=EmbeddingResponse,
                     responses=ERROR_RESPONSES, tags=["embeddings"])
router.add_api_route("/embeddings", embeddings_unprefixed, methods=["POST"], response_model=None,
                     responses=ERROR_RESPONSES, tags=["embeddings"], include_in_schema=False)
router.add_api_route("/embedding", embedding_native, methods=["POST"], responses=ERROR_RESPONSES,
                     tags=["embeddings"])
