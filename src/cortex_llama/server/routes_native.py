"""llama-server's own routes: ``/health``, ``/tokenize``, ``/detokenize``,
``/apply-template``, ``/completion``, ``/infill``, ``/props`` and ``/slots``."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request as HTTPRequest

from ..errors import StateError
from .errors import APIError, from_exception, invalid_value
from .infill import infill_tokens
from .plumbing import (Job, cancel_all, chat_inputs, native_n_predict, native_params, native_prompts,
                       results_or_disconnect, stream_response, submit)
from .schemas import (ERROR_RESPONSES, ApplyTemplateResponse, ChatCompletionRequest, DetokenizeRequest, DetokenizeResponse,
                      HealthResponse, InfillRequest, NativeCompletionRequest, SlotActionRequest, TokenizeRequest, TokenizeResponse, TokenPiece)
from .shaping import generation_settings, native_final, stream_native
from .state import ServerState, get_state

__all__ = ["router", "props_body"]

router = APIRouter()


@router.get("/health", response_model=HealthResponse, tags=["server"])
async def health(state: ServerState = Depends(get_state)) -> HealthResponse:
    """200 while the model is loaded and the engine serves, or while the server
    sleeps (``--sleep-idle-seconds``); 503 otherwise."""
    llm = state.llm
    if state.sleeping:
        return HealthResponse(model=state.model_id, slots_total=llm.config.n_seq_max, slots_busy=0, queue_depth=0)
    if not llm.is_loaded:
        raise APIError(503, "the model is not loaded", code="model_not_loaded")
    m = state.engine_metrics()
    return HealthResponse(model=state.model_id, slots_total=llm.config.n_seq_max,
                          slots_busy=int(m.get("slots_busy", 0)), queue_depth=int(m.get("queue_depth", 0)))


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES, tags=["tokens"])
async def tokenize(body: TokenizeRequest, state: ServerState = Depends(get_state)) -> TokenizeResponse:
    """Tokens of ``content`` (llama-server's extension)."""
    try:
        toks = await asyncio.to_thread(state.llm.tokenize, body.content, body.add_special, body.parse_special)
    except Exception as exc:  # noqa: BLE001
        raise from_exception(exc, prompt_param="content") from None
    if body.with_pieces:
        return TokenizeResponse(tokens=[TokenPiece(id=t, piece=state.piece(t)) for t in toks])
    return TokenizeResponse(tokens=toks)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES, tags=["tokens"])
async def detokenize(body: DetokenizeRequest, state: ServerState = Depends(get_state)) -> DetokenizeResponse:
    """Text of ``tokens`` (llama-server's extension)."""
    try:
        text = await asyncio.to_thread(state.llm.detokenize, body.tokens)
    except Exception as exc:  # noqa: BLE001
        raise from_exception(exc, prompt_param="tokens") from None
    return DetokenizeResponse(content=text)


@router.post("/apply-template", response_model=ApplyTemplateResponse, responses=ERROR_RESPONSES, tags=["chat"])
async def apply_template(body: ChatCompletionRequest, state: ServerState = Depends(get_state)
                         ) -> ApplyTemplateResponse:
    """The prompt a chat request renders to (llama-server's ``/apply-template``)."""
    messages, opts = chat_inputs(state, body)
    try:
        prompt = await asyncio.to_thread(state.llm.chat_prompt, messages, **opts)
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param="messages") from None
    return ApplyTemplateResponse(prompt=prompt)


@router.post("/completion", responses=ERROR_RESPONSES, tags=["completions"])
@router.post("/completions", responses=ERROR_RESPONSES, tags=["completions"], include_in_schema=False)
async def completion(body: NativeCompletionRequest, raw: HTTPRequest, state: ServerState = Depends(get_state)) -> Any:
    """llama-server's native completion (also at ``/completions``, as llama-server's):
    one body (a list of bodies for a list of
    prompts) with ``content``, ``stop_type``, ``timings``, ``generation_settings``...;
    ``stream`` answers one SSE event per token, then the final body. Raises
    :class:`APIError`: 400 naming the field (``exceed_context_size_error`` for a
    prompt over the context), 503 for a full queue."""
    prompts = await submit_prompts(state, body.prompt)
    return await _run_native(state, body, raw, prompts)


@router.post("/infill", responses=ERROR_RESPONSES, tags=["completions"])
async def infill(body: InfillRequest, raw: HTTPRequest, state: ServerState = Depends(get_state)) -> Any:
    """llama-server's fill-in-the-middle: the model's FIM prompt of ``input_prefix``,
    ``input_suffix``, ``input_extra`` and ``prompt``, then a ``/completion`` with
    the body's other fields, answered in its shape. Raises :class:`APIError`: 501
    when the model has no FIM prefix/suffix/middle token, 400 naming the field."""
    n_predict = native_n_predict(state, body.n_predict if body.n_predict is not None else body.max_tokens)
    try:
        toks = await asyncio.to_thread(infill_tokens, state, body, n_predict)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param="input_prefix") from None
    return await _run_native(state, body, raw, [toks])


async def _run_native(state: ServerState, body: NativeCompletionRequest, raw: HTTPRequest,
                      prompts: list[list[int]]) -> Any:
    """Generate for each prompt with ``body``'s settings: the native body (a list
    for several prompts), or its SSE stream. Raises :class:`APIError` (400 naming
    the field, 503 for a full queue)."""
    llm = state.llm
    params = native_params(state, body)
    settings = generation_settings(state, body, params, native_n_predict(
        state, body.n_predict if body.n_predict is not None else body.max_tokens))

    def make() -> list[Any]:
        reqs: list[Any] = []
        try:
            for toks in prompts:
                reqs.append(llm.submit(toks, params))
        except BaseException:
            cancel_all(reqs)
            raise
        return reqs

    job = Job(await submit(make, "prompt", "grammar" if body.grammar is not None else "json_schema"), 1)
    if body.stream:
        return stream_response(stream_native(state, body, job.reqs, settings), job)
    results = await results_or_disconnect(raw, job)
    if results is None:
        return Response(status_code=499)
    out = [native_final(state, body, settings, toks, c, i) for i, (toks, c) in enumerate(zip(prompts, results))]
    return JSONResponse(out[0] if len(out) == 1 else out)


async def submit_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    """The token lists of a native prompt, tokenized in a worker thread. Raises
    :class:`APIError` (400) like :func:`.plumbing.native_prompts`."""
    try:
        return await asyncio.to_thread(native_prompts, state, prompt)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP status
        raise from_exception(exc, prompt_param="prompt") from None



# -- server state: /props, /slots -------------------------------------------------------------
def _default_settings(state: ServerState) -> dict[str, Any]:
    """The generation settings of a request that sets nothing (the server's defaults)."""
    body = NativeCompletionRequest.model_validate({"prompt": ""})
    return generation_settings(state, body, native_params(state, body), native_n_predict(state, None))


def _token_text(state: ServerState, tok: int | None) -> str:
    return state.piece(tok) if tok is not None else ""


@router.get("/props", tags=["server"])
async def props(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """llama-server's server properties: default generation settings, slots, model,
    chat template, modalities, ``is_sleeping``; while the server sleeps, those saved
    on falling asleep. Raises :class:`APIError` 503 when the model is not loaded."""
    if state.sleeping and "props" in state.asleep:
        return {**state.asleep["props"], "is_sleeping": True}
    return await props_body(state)


async def props_body(state: ServerState) -> dict[str, Any]:
    """``GET /props``'s body for the loaded model. Raises :class:`APIError` 503 when
    the model is not loaded."""
    from .. import __version__
    from .._build_info import LLAMA_CPP_COMMIT

    llm = state.llm
    if not llm.is_loaded:
        raise APIError(503, "the model is not loaded", code="model_not_loaded")
    tmpl = await asyncio.to_thread(lambda: llm.chat_templates().info)
    proj = llm.projector
    vocab = llm.model.vocab
    return {
        "default_generation_settings": {"params": _default_settings(state), "n_ctx": llm.config.context_size},
        "total_slots": llm.config.n_seq_max, "model_alias": state.model_id,
        "model_path": str(llm.config.model_path),
        "modalities": {"vision": bool(proj and proj.supports_vision), "video": False,
                       "audio": bool(proj and proj.supports_audio)},
        "endpoint_slots": state.slots_endpoint, "endpoint_props": False, "endpoint_metrics": state.metrics_endpoint,
        "chat_template": tmpl.get("source", ""), "chat_template_caps": tmpl.get("caps", {}),
        **({"chat_template_tool_use": tmpl["tool_use_source"]} if tmpl.get("tool_use_source") else {}),
        "bos_token": _token_text(state, vocab.bos), "eos_token": _token_text(state, vocab.eos),
        "build_info": f"cortex-llama {__version__} (llama.cpp {LLAMA_CPP_COMMIT[:12]})", "is_sleeping": False,
    }


@router.post("/props", responses=ERROR_RESPONSES, tags=["server"])
async def set_props() -> None:
    """Changing server properties is not supported. Raises :class:`APIError` 501."""
    raise APIError(501, "this server does not support changing its properties (llama-server's --props)",
                   type="not_supported_error", code="not_supported")


@router.get("/slots", responses=ERROR_RESPONSES, tags=["server"])
async def slots(state: ServerState = Depends(get_state)) -> list[dict[str, Any]]:
    """llama-server's slot states: ``id``, ``n_ctx``, ``is_processing`` and the
    tokens cached (``n_cached``). Raises :class:`APIError` 501 when started with
    ``--no-slots``."""
    if not state.slots_endpoint:
        raise APIError(501, "this server does not serve /slots: start it without --no-slots",
                       type="not_supported_error", code="slots_disabled")
    slots = state.llm.slots
    n_ctx = state.llm.config.context_size
    speculative = bool(state.llm.config.speculative_types)
    return [{"id": i, "n_ctx": n_ctx, "speculative": speculative, "is_processing": slots.is_busy(i),
             "n_cached": slots.cached_tokens(i)} for i in range(state.llm.config.n_seq_max)]


@router.post("/slots/{id_slot}", responses=ERROR_RESPONSES, tags=["server"])
async def slot_action(id_slot: int, action: str = "", body: Optional[SlotActionRequest] = None,
                      state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """llama-server's ``?action=save|restore|erase`` of a slot, with files in
    ``--slot-save-path`` (each waits until the slot runs no request). Raises
    :class:`APIError`: 501 without ``--slot-save-path`` (as llama-server); 400 for
    another action, slot id or file name, a missing file or one that does not
    restore; 500 when the file cannot be written."""
    if state.slot_save_path is None:
        raise APIError(501, "this server does not support slot actions: start it with --slot-save-path",
                       type="not_supported_error", code="not_supported")
    if action not in ("save", "restore", "erase"):
        raise invalid_value("action", f"{action!r} is not save, restore or erase")
    if not 0 <= id_slot < state.llm.config.n_seq_max:
        raise invalid_value("id_slot", f"{id_slot} is not in [0, {state.llm.config.n_seq_max})")
    slots = state.llm.slots
    if action == "erase":
        return {"id_slot": id_slot, "n_erased": await asyncio.to_thread(slots.erase, id_slot)}
    name = slot_file_name(body.filename if body is not None else None)
    path = os.path.join(state.slot_save_path, name)
    try:
        if action == "save":
            done = await asyncio.to_thread(slots.save, id_slot, path)
            return {"id_slot": id_slot, "filename": name, "n_saved": done.n_tokens, "n_written": done.n_bytes,
                    "timings": {"save_ms": done.ms}}
        done = await asyncio.to_thread(slots.restore, id_slot, path)
    except FileNotFoundError:
        raise invalid_value("filename", f"{name!r} is not in the slot save folder") from None
    except StateError as exc:
        if action == "save":
            raise APIError(500, f"unable to save slot {id_slot}: {exc}", code="slot_save_failed") from None
        raise invalid_value("filename", f"unable to restore slot {id_slot}: {exc}") from None
    return {"id_slot": id_slot, "filename": name, "n_restored": done.n_tokens, "n_read": done.n_bytes,
            "timings": {"restore_ms": done.ms}}


def slot_file_name(name: str | None) -> str:
    """``name`` when it is a plain file name (no folder part, no ``..``, no NUL,
    at most 255 bytes), as llama-server's ``fs_validate_filename``; raises
    :func:`invalid_value` naming ``filename`` else."""
    if not name:
        raise invalid_value("filename", "a file name in the slot save folder is required")
    bad = (name in (".", "..") or any(c in name for c in "/\\\0") or len(name.encode()) > 255
           or name != name.strip() or any(ord(c) < 32 for c in name))
    if bad:
        raise invalid_value("filename", f"{name[:80]!r} is not a plain file name")
    return name
