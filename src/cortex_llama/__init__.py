"""cortex-llama: llama.cpp compiled from a pinned vendored tree, driven through cffi.

Layers, each using only the one below it:

* ``cortex_llama._lib``: the raw ``ffi``/``lib`` (llama.h's C names);
* owned objects: :class:`Model`, :class:`Vocab`, :class:`Context`, :class:`Batch`,
  :class:`Sampler`, :class:`SamplerChain`, :class:`PySampler`, :class:`LoraAdapter`;
* the high level: :class:`LLM` with :class:`ModelConfig`, :class:`GenerationParams`
  and :class:`Completion`;
* the ``cortex-llama`` command line.
"""

from __future__ import annotations

from ._version import __version__

from .batch import Batch
from .context import Context, LoraAdapter
from .errors import (
    AbortedError,
    ChatRequestError,
    ClosedError,
    ContextError,
    DecodeError,
    FatalDecodeError,
    GrammarError,
    InvalidBatchError,
    KVCacheFullError,
    LlamaError,
    ModelLoadError,
    QueueFullError,
    RPCError,
    RegistryError,
    SpeculationError,
    StateError,
    TemplateError,
    TokenizeError,
)
from .model import Detokenizer, Model, Vocab, quantize
from .sampling import Candidates, PySampler, Sampler, SamplerChain
from .speculative import Drafter
from .gen.request import Request
from .llm import LLM, Completion, GenerationParams, ModelConfig
from .rerank import RerankResult
from .chat import ChatDelta, ChatTemplates, ChatParser
from .conversation import ChatCompletion, ChatOptions, ToolCall

__all__ = [
    "__version__",
    "Model", "Vocab", "Detokenizer", "quantize",
    "Context", "LoraAdapter", "Batch",
    "Sampler", "SamplerChain", "PySampler", "Candidates", "Drafter",
    "LLM", "ModelConfig", "GenerationParams", "Completion", "Request", "RerankResult",
    "LlamaError", "ModelLoadError", "ContextError", "ClosedError", "DecodeError",
    "KVCacheFullError", "AbortedError", "InvalidBatchError", "FatalDecodeError",
    "TokenizeError", "GrammarError", "StateError", "TemplateError", "RPCError",
    "QueueFullError", "RegistryError", "ChatRequestError", "SpeculationError",
    "ChatTemplates", "ChatParser", "ChatDelta", "ChatCompletion", "ChatOptions", "ToolCall",
]
