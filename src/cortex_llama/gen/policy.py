"""From :class:`GenerationParams` to a :class:`SamplerChain`, and sampling with it.

The chain is built in the caller's thread (so a bad grammar or JSON schema
raises there, before queueing), shown the prompt as penalty history, and used
by the engine thread. Chains with a grammar are sampled through
:func:`sample` 's guarded path, which raises :class:`GrammarError` when the
grammar allows no token instead of letting llama.cpp abort the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..chat import schema_to_grammar
from ..context import Context
from ..errors import GrammarError
from ..model import Model
from ..sampling import TOKEN_DATA_DTYPE, SamplerChain
from .params import GenerationParams

__all__ = ["build_sampler", "sample", "has_grammar", "is_plain_greedy", "GrammarConstraint"]


@dataclass(frozen=True)
class GrammarConstraint:
    """A grammar from a chat template (llama.cpp's ``common_chat_params``): lazy ones
    constrain only from a trigger on, so that free text stays free."""

    grammar: str
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = field(default=())
    trigger_tokens: tuple[int, ...] = field(default=())


def build_sampler(model: Model, p: GenerationParams, *, default_seed: int | None, n_ctx: int,
                  prompt: list[int], constraint: GrammarConstraint | None = None) -> SamplerChain:
    """The sampler chain for ``p`` (seed: ``p.seed``, else ``default_seed``).

    ``constraint`` (from the chat template) replaces ``p.grammar``/``p.json_schema``,
    which the template has folded into it. Penalties see the prompt too (as in
    llama-server), over their window. Raises :class:`GrammarError` for a bad
    grammar or schema and ``ValueError`` for bad values.
    """
    grammar = p.grammar
    lazy = False
    patterns: tuple[str, ...] = ()
    tokens: tuple[int, ...] = ()
    if constraint is not None:
        grammar = constraint.grammar or None
        lazy, patterns, tokens = constraint.lazy, constraint.trigger_patterns, constraint.trigger_tokens
    elif p.json_schema is not None:
        grammar = schema_to_grammar(p.json_schema)
    seed = p.seed if p.seed is not None else default_seed
    chain = SamplerChain.from_params(
        model, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
        repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
        presence_penalty=p.presence_penalty, penalty_last_n=p.penalty_last_n, seed=seed,
        logit_bias=p.logit_bias, grammar=grammar, n_ctx=n_ctx, grammar_lazy=lazy,
        trigger_patterns=patterns, trigger_tokens=tokens)
    if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
        last_n = p.penalty_last_n
        chain.accept_history(prompt if last_n < 0 else prompt[max(0, len(prompt) - last_n):])
    return chain


def is_plain_greedy(chain: SamplerChain) -> bool:
    """True for a chain that is only a greedy sampler: the engine samples all such
    rows of a step in one numpy argmax."""
    biases = chain.argmax_biases
    return biases is not None and not biases


def has_grammar(chain: SamplerChain) -> bool:
    """Whether :func:`sample` must take the guarded path for ``chain``."""
    return any(s.name.startswith("grammar") for s in chain.samplers)


def sample(chain: SamplerChain, ctx: Context, row: int, guarded: bool | None = None) -> int:
    """Sample (and accept) a token from batch entry ``row`` of ``ctx``'s last decode
    (``guarded``: the chain has a grammar, see :func:`has_grammar`).

    Raises :class:`GrammarError` when the chain's grammar rejects every token,
    and re-raises a PySampler's exception.
    """
    if guarded is None:
        guarded = has_grammar(chain)
    if not guarded:
        return chain.sample(ctx, row)
    logits = ctx.logits(row)
    cand = np.empty(logits.size, dtype=TOKEN_DATA_DTYPE)
    cand["id"] = np.arange(logits.size, dtype=np.int32)
    cand["logit"] = logits
    cand["p"] = 0.0
    n = chain.apply(cand)
    sel = chain.last_selected
    if not 0 <= sel < n or not np.isfinite(cand["logit"][sel]):
        raise GrammarError("the grammar allows no token at this point of the output "
                           "(every candidate was rejected)")
    tok = int(cand["id"][sel])
    chain.accept(tok)
    return tok
