"""The output stage: what one generated token becomes.

:class:`OutputStage` takes each picked token of one request and turns it into
text: end-of-generation check, incremental detokenizing (multi-byte characters
held until complete), stop strings (only a possible prefix is held back),
per-token logprobs, and the ``max_tokens`` limit. It is plain data over the
vocabulary, fed by the engine thread; :class:`~.request.Request` publishes its
deltas to ``TextStream``, ``AsyncTextStream`` and the server alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from ..model import Vocab
from .params import FINISH_EOG, FINISH_LENGTH, FINISH_STOP, GenerationParams, TokenLogprob

__all__ = ["OutputStage", "TokenOutput", "StopMatcher", "log_softmax_norm", "top_logprobs"]


def log_softmax_norm(logits: np.ndarray) -> float:
    """log(sum(exp(logits))), computed stably in float64."""
    m = float(logits.max())
    return m + math.log(float(np.exp(logits - m, dtype=np.float64).sum()))


def top_logprobs(logits: np.ndarray, n: int, lse: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most likely token ids and their log probabilities, best first.

    Uses ``argpartition`` (O(n_vocab)), never a full sort of the vocabulary.
    """
    if lse is None:
        lse = log_softmax_norm(logits)
    if n <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    n = min(n, logits.size)
    idx = np.argpartition(-logits, n - 1)[:n]
    idx = idx[np.argsort(-logits[idx], kind="stable")]
    return idx, logits[idx].astype(np.float64) - lse


class StopMatcher:
    """Finds stop strings in streamed text, holding back only a possible prefix.

    Work per delta is bounded by the longest stop string, whatever the length of
    the output so far.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.keep = max((len(s) for s in self.stops), default=0) - 1
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        if not self.stops:
            return delta, False
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        # hold back the longest suffix that could still start a stop string
        hold = 0
        for k in range(min(self.keep, len(self.pending)), 0, -1):
            tail = self.pending[-k:]
            if any(s.startswith(tail) for s in self.stops):
                hold = k
                break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TokenOutput(NamedTuple):
    """What one token produced: ``text`` safe to emit now, and ``finish`` (a
    finish reason) when the request ends with this token. (A named tuple: one
    is made per token.)"""

    text: str = ""
    finish: str | None = None


class OutputStage:
    """Turns one request's picked tokens into text, tokens and logprobs.

    ``eog_cache`` (token id -> is end-of-generation) may be shared by the
    requests of one vocabulary; ``preserved_tokens`` are special tokens whose
    text is kept (a chat format's tool-call markers).
    """

    def __init__(self, vocab: Vocab, params: GenerationParams, eog_cache: dict[int, bool] | None = None,
                 preserved_tokens: Sequence[int] = ()) -> None:
        self._vocab = vocab
        self._eog = eog_cache if eog_cache is not None else {}
        self._detok = vocab.detokenizer(preserved=preserved_tokens)
        self._stop = StopMatcher(params.stop)
        self._max_tokens = params.max_tokens
        self._n_logprobs = params.logprobs
        #: the generated tokens (an end-of-generation token is not one of them)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None

    def is_eog(self, tok: int) -> bool:
        eog = self._eog.get(tok)
        if eog is None:
            eog = self._eog[tok] = self._vocab.is_eog(tok)
        return eog

    def take(self, tok: int, logits: np.ndarray | None = None) -> TokenOutput:
        """Take the picked token ``tok`` (with the logits it came from, for
        logprobs). Raises nothing of its own (a token id outside the vocabulary
        raises the detokenizer's ``ValueError``)."""
        if self.is_eog(tok):
            return TokenOutput("", FINISH_EOG)
        self.tokens.append(tok)
        if self.logprobs is not None and logits is not None:
            self.logprobs.append(self._logprob(tok, logits))
        text = self._detok.feed(tok)
        if self._stop.stops:
            text, stopped = self._stop.feed(text)
            if stopped:
                return TokenOutput(text, FINISH_STOP)
        if len(self.tokens) >= self._max_tokens:
            return TokenOutput(text, FINISH_LENGTH)
        return TokenOutput(text, None)

    def _logprob(self, tok: int, logits: np.ndarray) -> TokenLogprob:
        lse = log_softmax_norm(logits)
        ids, lps = top_logprobs(logits, self._n_logprobs or 0, lse)
        return TokenLogprob(tok, self._detok.piece(tok).decode("utf-8", "replace"), float(logits[tok]) - lse,
                            list(zip(ids.tolist(), lps.tolist())))

    def flush(self) -> tuple[str, bool]:
        """The text still held back (an incomplete character, a possible stop
        prefix) at the end; True when it completes a stop string (then the text
        is what comes before it)."""
        text, stopped = self._stop.feed(self._detok.flush())
        if not stopped:
            text += self._stop.flush()
        return text, stopped
