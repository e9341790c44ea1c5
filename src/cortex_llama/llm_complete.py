"""Plain completion, the :class:`LLM` methods that generate from a prompt (text
or token ids): submit, complete, stream and generate, and their asyncio forms."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Sequence

from .gen.params import Completion, GenerationParams
from .gen.request import Request
from .gen.streams import AsyncTextStream, TextStream
from .llm_requests import UsesRequests, merged_params, wait_for
from .sampling import SamplerChain

__all__ = ["CompletionMethods"]


class CompletionMethods(UsesRequests):
    """The completion methods of :class:`~cortex_llama.llm.LLM` (a base class of
    it; see :class:`UsesRequests`)."""

    def submit(self, prompt: str | Sequence[int], params: GenerationParams | None = None, *,
               sampler: SamplerChain | None = None, **overrides: Any) -> Request:
        """Queue a generation and return its :class:`Request` handle at once.

        ``sampler`` replaces the chain built from the params (temperature,
        penalties, grammar, ... are then ignored): a :class:`SamplerChain` of
        your own, e.g. with a :class:`PySampler`; it belongs to this request.

        Checks everything in the caller's thread first. Raises ``TypeError`` for
        unknown parameter names, ``ValueError`` for an empty prompt, a prompt
        that cannot fit ``context_size`` (unless ``truncate``) or bad values,
        :class:`GrammarError` for a bad grammar or JSON schema,
        :class:`ClosedError` when unloaded and :class:`QueueFullError` when
        ``ModelConfig.max_queue`` requests already wait.
        """
        p = merged_params(params, overrides)
        req = self.requests.request(prompt, p, sampler)
        self.requests.engine.submit(req)
        return req

    def complete(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
                 **overrides: Any) -> Completion:
        """Complete ``prompt`` (text or token ids); keyword overrides replace params fields.

        Raises like :meth:`submit`, and re-raises the request's own failure
        (e.g. :class:`ClosedError` when the LLM is unloaded meanwhile).
        """
        return wait_for(self.submit(prompt, params, **overrides))

    def stream(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
               **overrides: Any) -> TextStream:
        """Text deltas as they are generated (never a split UTF-8 character).

        The request is submitted at once (raising like :meth:`submit`). Breaking
        out of the loop, ``close()``, or dropping the stream cancels it.
        """
        return TextStream(self.submit(prompt, params, **overrides))

    def _submit_many(self, prompts: Sequence[str | Sequence[int]], p: GenerationParams) -> list[Request]:
        if isinstance(prompts, (str, bytes)):
            raise TypeError("generate() takes a list of prompts; use complete() for one")
        reqs = [self.requests.request(pr, p if p.seed is None else replace(p, seed=(p.seed + i) % 2**32))
                for i, pr in enumerate(prompts)]
        self.requests.engine.submit_many(reqs)  # together: they start in the same step
        return reqs

    def generate(self, prompts: Sequence[str | Sequence[int]], params: GenerationParams | None = None,
                 **overrides: Any) -> list[Completion]:
        """Complete many prompts together: one request each, all sharing decodes
        (up to ``n_seq_max`` at once, the rest join as slots free up).

        Each has its own sampler (seeded ``seed + i`` when a seed is given), stop
        state and finish reason; a Completion comes back for every prompt. Greedy
        results equal completing each alone. Raises like :meth:`submit` (then
        nothing runs) and re-raises the first failed request's error.
        """
        reqs = self._submit_many(prompts, merged_params(params, overrides))
        try:
            return [r.result() for r in reqs]
        except BaseException:
            for r in reqs:
                r.cancel()
            raise

    async def acomplete(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
                        **overrides: Any) -> Completion:
        """:meth:`complete` for asyncio: submits, then awaits without a thread.
        Cancelling the task cancels the request."""
        return await self.submit(prompt, params, **overrides).aresult()

    async def agenerate(self, prompts: Sequence[str | Sequence[int]], params: GenerationParams | None = None,
                        **overrides: Any) -> list[Completion]:
        reqs = self._submit_many(prompts, merged_params(params, overrides))
        try:
            return list(await asyncio.gather(*(r.aresult() for r in reqs)))
        except BaseException:
            for r in reqs:
                r.cancel()
            raise

    def astream(self, prompt: str | Sequence[int], params: GenerationParams | None = None,
                **overrides: Any) -> AsyncTextStream:
        """:meth:`stream` for ``async for``: deltas arrive through the event loop
        (``call_soon_threadsafe``), no thread per request; leaving the loop early
        or cancelling the task cancels the request. Submits at once, raising like
        :meth:`submit`."""
        return AsyncTextStream(self.submit(prompt, params, **overrides))
