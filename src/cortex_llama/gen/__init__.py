"""The generation engine: parameters, requests, sampler policy and the step loop.

``params`` (configuration and results), ``policy`` (params to a sampler chain),
``output`` (a token's text, stop strings, logprobs), ``request`` (one request's
state and output channel) and ``streams`` (its consumers); ``scheduler`` (plain
step plans), ``runner`` (plans to C calls), ``selection`` (token picking) and
``engine`` (the step loop thread) over them. ``LLM`` in
:mod:`cortex_llama.llm` is the facade over these.
"""

from __future__ import annotations

from .engine import Engine
from .params import (FINISH_CANCELLED, FINISH_EOG, FINISH_LENGTH, FINISH_STOP, Completion,
                     GenerationParams, ModelConfig, Timings, TokenLogprob, Usage)
from .request import Request

__all__ = ["Engine", "Request", "ModelConfig", "GenerationParams", "Completion", "Usage", "Timings",
           "TokenLogprob", "FINISH_STOP", "FINISH_LENGTH", "FINISH_EOG", "FINISH_CANCELLED"]
