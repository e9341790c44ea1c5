"""Checked requests for the :class:`LLM` facade: a prompt's tokens, fitted to the
context, with its sampler and LoRA key; and the feed of a prompt with media."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .conversation import ChatPlan
from .errors import MediaError
from .gen import media as engine_media
from .gen.engine import Engine
from .gen.lora import LoraSet
from .gen.params import Completion, GenerationParams, ModelConfig, with_overrides
from .gen.policy import GrammarConstraint, build_sampler
from .gen.request import Request
from .model import Model
from .multimodal import Projector
from .sampling import SamplerChain

__all__ = ["RequestBuilder", "UsesRequests", "merged_params", "wait_for"]


def merged_params(params: GenerationParams | None, overrides: Mapping[str, Any]) -> GenerationParams:
    """``params`` (default: ``GenerationParams()``) with ``overrides`` replacing
    fields; raises ``TypeError`` for an unknown field name."""
    return with_overrides(params or GenerationParams(), overrides)


def wait_for(req: Request) -> Completion:
    """The result of ``req``, re-raising its failure; if waiting is interrupted
    (e.g. Ctrl-C), the request is cancelled and the interruption re-raised."""
    try:
        return req.result()
    except BaseException:
        req.cancel()  # e.g. Ctrl-C while waiting: the request stops too
        raise


@dataclass(frozen=True, eq=False)
class RequestBuilder:
    """Checked, not yet submitted :class:`Request` objects for the model an
    :class:`LLM` has loaded (``LLM.requests`` makes one over what is loaded).

    ``n_ctx`` is the KV cells one request may hold; ``eog_cache`` the LLM's
    cache of end-of-generation tokens, shared by its requests. Submit a request
    with ``engine.submit``.
    """

    model: Model
    engine: Engine
    loras: LoraSet
    projector: Projector | None
    config: ModelConfig
    n_ctx: int
    eog_cache: dict[int, bool]

    def prompt_tokens(self, prompt: str | Sequence[int], p: GenerationParams) -> list[int]:
        """The tokens of ``prompt`` (text, or token ids), cut to their end to fit
        with ``p.truncate``. Raises ``ValueError`` for an empty prompt, a token id
        outside the vocabulary and a prompt that does not fit."""
        model = self.model
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            toks = model.tokenize(prompt, add_special=True, parse_special=True).tolist()
        else:
            toks = model.vocab.check_tokens(list(prompt)).tolist()
            if not toks:
                raise ValueError("prompt is empty")
        n_ctx = self.n_ctx
        limit = n_ctx - min(p.max_tokens, n_ctx // 2) if p.truncate else n_ctx - 1
        if len(toks) > limit:
            if not p.truncate:
                raise ValueError(f"prompt of {len(toks)} tokens does not fit the context of {n_ctx} "
                                 f"tokens (ModelConfig.context_size); pass truncate=True to keep its end")
            toks = toks[-limit:]
        return toks

    def request(self, prompt: str | Sequence[int], p: GenerationParams,
                sampler: SamplerChain | None = None, *, constraint: GrammarConstraint | None = None,
                preserved_tokens: Sequence[int] = ()) -> Request:
        """A checked, not yet submitted request (raises like :meth:`LLM.submit`,
        but for a full queue)."""
        engine = self.engine
        model = self.model
        if p.slot is not None and p.slot >= self.config.n_seq_max:
            raise ValueError(f"slot {p.slot} is not in [0, {self.config.n_seq_max}) (ModelConfig.n_seq_max)")
        toks = self.prompt_tokens(prompt, p)
        if sampler is not None:
            if not isinstance(sampler, SamplerChain):
                raise TypeError(f"sampler must be a SamplerChain, not {type(sampler).__name__}")
            if not sampler.selects:
                raise ValueError("sampler: the chain has no selecting sampler (add greedy or dist)")
            chain = sampler
        else:
            chain = build_sampler(model, p, default_seed=self.config.seed, n_ctx=self.n_ctx,
                                  prompt=toks, constraint=constraint)
        req = Request(toks, p, chain, model.vocab, self.eog_cache, on_cancel=engine.wake,
                      preserved_tokens=preserved_tokens)
        req.lora_key = self.loras.key(p.lora)
        return req

    def _has_bos(self, text: str) -> bool:
        """Whether a rendered chat prompt starts with the BOS token's text."""
        bos = self.model.vocab.bos
        return bos is not None and text.startswith(self.model.vocab.text(bos))

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of a rendered chat prompt; BOS is added only when the template did
        not write it already."""
        return self.model.tokenize(text, add_special=not self._has_bos(text), parse_special=True).tolist()

    def media_request(self, text: str, bitmaps: list[Any], p: GenerationParams, plan: ChatPlan) -> Request:
        """A checked request for a prompt with media markers (one per bitmap).

        Raises :class:`MediaError` for a prompt that ends with media and
        ``ValueError`` for one that does not fit the context."""
        engine = self.engine
        model = self.model
        proj = self.projector
        assert proj is not None
        chunks = proj.tokenize(text, bitmaps, add_special=not self._has_bos(text))
        feed, spans, text_tokens = engine_media.prompt_feed(chunks)
        if feed[-1] < 0:
            raise MediaError("the prompt ends with an image or audio clip: put text after it")
        if len(feed) >= self.n_ctx:
            raise ValueError(f"prompt of {len(feed)} tokens ({len(feed) - len(text_tokens)} of them "
                             f"image/audio embeddings) does not fit the context of {self.n_ctx} "
                             "tokens (ModelConfig.context_size)")
        chain = build_sampler(model, p, default_seed=self.config.seed, n_ctx=self.n_ctx,
                              prompt=text_tokens, constraint=plan.constraint)
        req = Request(feed, p, chain, model.vocab, self.eog_cache, on_cancel=engine.wake,
                      preserved_tokens=plan.preserved_tokens)
        req.media = spans
        return req


class UsesRequests:
    """The base of :class:`LLM`'s method groups (completion, chat; each in a module
    of its own): they reach the loaded model only through :attr:`requests`,
    which LLM implements."""

    @property
    @abstractmethod
    def requests(self) -> RequestBuilder:
        """A RequestBuilder over the loaded model; ClosedError when unloaded."""
