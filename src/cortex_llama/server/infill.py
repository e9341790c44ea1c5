"""The prompt of llama-server's ``/infill`` (fill-in-the-middle), built with the
model's FIM tokens.

With FIM_REP and FIM_SEP tokens the repo-level pattern is used::

    <FIM_REP>myproject\\n<FIM_SEP>{filename}\\n{text}...<FIM_SEP>filename\\n
    <FIM_PRE>{input_prefix}<FIM_SUF>{input_suffix}<FIM_MID>{prompt}

without them the extra files are each put after a plain ``--- snippet ---``
separator, before ``<FIM_PRE>``. As in llama-server the prefix keeps its last
3/4 of a batch of tokens, the suffix its first tokens up to a quarter batch, and
the extra context fills what the slot has left after a batch and twice the
tokens to predict (the oldest are cut). ``prompt`` goes after ``<FIM_MID>``, as
llama-server's README documents it.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError, exceed_context
from .schemas import InfillRequest
from .state import ServerState

__all__ = ["check_fim", "infill_tokens"]

_REPO = "myproject\n"
_SNIPPET = "\n\n--- snippet ---\n\n"
_LAST_FILE = "filename\n"


def check_fim(state: ServerState) -> None:
    """Raises :class:`APIError` 501 (llama-server's not-supported error) naming the
    FIM tokens the model's vocabulary lacks."""
    vocab = state.llm.model.vocab
    missing = [name for name, tok in (("prefix (fim_pre)", vocab.fim_pre), ("suffix (fim_suf)", vocab.fim_suf),
                                      ("middle (fim_mid)", vocab.fim_mid)) if tok is None]
    if missing:
        raise APIError(501, "infill is not supported by this model: its vocabulary has no FIM "
                            f"{', '.join(missing)} token", type="not_supported_error", code="not_supported")


def _mixed(state: ServerState, value: Any, param: str) -> list[int]:
    """Tokens of a string, or of token ids and strings mixed (no BOS, special
    tokens not parsed). Raises :class:`APIError` (400) naming ``param`` and an id
    outside the vocabulary."""
    llm = state.llm
    parts = [value] if isinstance(value, str) else value
    n_vocab = llm.model.n_vocab
    out: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            out += llm.tokenize(part, add_special=False, parse_special=False)
        elif isinstance(part, int) and not isinstance(part, bool):
            if not 0 <= part < n_vocab:
                raise APIError(400, f"{param}[{i}]: token id {part} is outside the vocabulary [0, {n_vocab})",
                               param=param, code="invalid_value")
            out.append(part)
        else:
            raise APIError(400, f"{param}[{i}]: must be a string or a token id", param=param, code="invalid_value")
    return out


def _extra(state: ServerState, body: InfillRequest, rep: int | None, sep: int | None) -> list[int]:
    """The tokens of ``input_extra`` in the repo-level pattern (or with snippet
    separators when the model has no FIM_REP / FIM_SEP). Never raises."""
    llm = state.llm

    def tok(text: str) -> list[int]:
        return llm.tokenize(text, add_special=False, parse_special=False)
    out: list[int] = [rep, *tok(_REPO)] if rep is not None else []
    for chunk in body.input_extra:
        out += [sep, *tok(chunk.filename + "\n")] if sep is not None else tok(_SNIPPET)
        out += tok(chunk.text)
    if sep is not None:
        out += [sep, *tok(_LAST_FILE)]
    return out


def infill_tokens(state: ServerState, body: InfillRequest, n_predict: int) -> list[int]:
    """The FIM prompt of ``body``. Raises :class:`APIError`: 501 without FIM
    tokens, 400 naming a bad field, 400 ``exceed_context_size_error`` when the
    prompt does not fit a slot."""
    check_fim(state)
    llm = state.llm
    vocab = llm.model.vocab
    pre, suf, mid = vocab.fim_pre, vocab.fim_suf, vocab.fim_mid
    assert pre is not None and suf is not None and mid is not None  # check_fim
    prefix = _mixed(state, body.input_prefix, "input_prefix")
    suffix = _mixed(state, body.input_suffix, "input_suffix")
    prompt = llm.tokenize(body.prompt, add_special=False, parse_special=True) if body.prompt else []
    extra = _extra(state, body, vocab.fim_rep, vocab.fim_sep)
    n_batch, n_ctx = llm.config.batch_size, llm.config.context_size
    n_prefix = min(len(prefix), 3 * (n_batch // 4))
    n_suffix = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * max(n_predict, 0)), len(extra))
    bos = [vocab.bos] if vocab.bos is not None and vocab.add_bos else []
    toks = [*(extra[len(extra) - n_extra:] if n_extra else []), *bos, pre, *prefix[len(prefix) - n_prefix:],
            suf, *suffix[:n_suffix], mid, *prompt]
    if len(toks) >= n_ctx:
        raise exceed_context(len(toks), n_ctx, "input_prefix")
    return toks
