"""What every route of one app shares: :class:`ServerState`, kept in ``app.state``
and handed to the routes by the :func:`get_state` dependency."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request as HTTPRequest

from ..content import MediaPolicy

from ..llm import LLM
from .metrics import ServerMetrics

if TYPE_CHECKING:
    from .sleep import Sleeper

__all__ = ["ServerState", "get_state", "model_slug", "name_list", "GAUGES"]

#: the engine metrics that are gauges (the others are counters, summed over the
#: model's loads; ``tokens_max`` is a maximum)
GAUGES = frozenset({"requests_running", "queue_depth", "slots_busy", "slots_total", "kv_cells_used",
                    "kv_cells_total"})


def model_slug(model_path: str | os.PathLike[str]) -> str:
    """The model id derived from a GGUF file name: ``SmolLM2-135M-Instruct-Q4_1.gguf``
    gives ``smollm2-135m-instruct-q4_1`` (lower case; runs of characters other than
    letters, digits, ``.``, ``_`` and ``-`` become one ``-``)."""
    stem = Path(os.fspath(model_path)).name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-len(".gguf")]
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")
    return slug or "model"


def name_list(value: str | None) -> list[str]:
    """llama-server's comma-separated ``--alias`` / ``--tags``: the names stripped,
    without empty ones and duplicates, sorted (its ``std::set``)."""
    return sorted({n.strip() for n in (value or "").split(",")} - {""})


@dataclass
class ServerState:
    """The served model and the settings the routes read.

    ``model_id`` is the id answers carry (any requested name is accepted);
    ``media`` the policy for local media files in chat messages (the default
    allows none). ``n_predict`` (-1: no limit) and ``sampling`` (GenerationParams fields) are
    the server's defaults for a request that gives none (``-n``, ``--temp``, ...);
    ``slots_endpoint`` and ``metrics_endpoint`` enable ``/slots`` and ``/metrics``;
    ``enable_thinking`` is ``--reasoning on|off`` (None: auto), the chat default a
    request's ``chat_template_kwargs.enable_thinking`` overrides; ``slot_save_path``
    is ``--slot-save-path``; ``sleep_idle_seconds`` is ``--sleep-idle-seconds``
    (< 0: never sleeps; see :mod:`.sleep`), ``sleeper`` its timer (set by the app),
    ``asleep`` what the routes answering while asleep saved on falling asleep;
    ``aliases`` and ``tags`` are ``--alias``'s names and ``--tags``' (``/v1/models``);
    ``verbose`` is ``--verbose`` (every chat answer carries ``__verbose``).
    """

    llm: LLM
    model_id: str
    reasoning_format: str = "auto"
    media: MediaPolicy = field(default_factory=MediaPolicy)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    created: int = field(default_factory=lambda: int(time.time()))
    n_predict: int = -1
    sampling: dict[str, Any] = field(default_factory=dict)
    slots_endpoint: bool = True
    metrics_endpoint: bool = False
    enable_thinking: bool | None = None
    slot_save_path: str | None = None
    sleep_idle_seconds: float = -1
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    verbose: bool = False
    sleeper: Sleeper | None = field(default=None, repr=False)
    asleep: dict[str, Any] = field(default_factory=dict, repr=False)
    _carry: dict[str, float] = field(default_factory=dict, repr=False)
    _eog: list[int] | None = field(default=None, repr=False)

    @property
    def reranking(self) -> bool:
        """``--reranking``: embeddings on with rank pooling (``/rerank`` is served)."""
        c = self.llm.config
        return bool(c.embeddings) and c.pooling == "rank"

    def piece(self, tok: int) -> str:
        """The text of token ``tok`` (its piece cached by the vocabulary). Raises
        ``ValueError`` for an id outside the vocabulary."""
        return self.llm.model.vocab.cached_piece(tok, True).decode("utf-8", "replace")

    def eog_tokens(self) -> list[int]:
        """The vocabulary's end-of-generation tokens (computed once). Raises
        :class:`ClosedError` when the model is not loaded."""
        if self._eog is None:
            vocab = self.llm.model.vocab
            self._eog = [t for t in range(self.llm.model.n_vocab) if vocab.is_eog(t)]
        return self._eog

    @property
    def sleeping(self) -> bool:
        """Whether the model is unloaded for ``--sleep-idle-seconds`` (or falling asleep)."""
        return self.sleeper is not None and self.sleeper.sleeping

    def engine_metrics(self) -> dict[str, Any]:
        """The engine's gauges and counters, the counters summed over the model's
        loads (a sleeping server unloads it); without a model loaded, the sums and
        idle gauges (empty when it never slept)."""
        live = dict(self.llm.metrics()) if self.llm.is_loaded else {}
        if not self._carry:
            return live
        out: dict[str, Any] = dict(self._carry)
        for name, value in live.items():
            if name in GAUGES:
                out[name] = value
            elif name == "tokens_max":
                out[name] = max(value, out.get(name, 0))
            else:
                out[name] = out.get(name, 0) + value
        return out

    def carry_metrics(self) -> None:
        """Keep the counters before the model unloads (its engine's start at 0 again)."""
        self._carry = {k: (v if k not in GAUGES or k.endswith("_total") else 0)
                       for k, v in self.engine_metrics().items()}


def get_state(raw: HTTPRequest) -> ServerState:
    """The FastAPI dependency giving a route its app's :class:`ServerState`."""
    state: ServerState = raw.app.state.server
    return state
