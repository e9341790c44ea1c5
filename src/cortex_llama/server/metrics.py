"""Prometheus text exposition of the engine's counters and the server's own.

``GET /metrics`` answers the text format (version 0.0.4): every engine counter
of :meth:`cortex_llama.LLM.metrics` as ``cortex_llama_<name>`` (a counter when
the name ends in ``_total``, else a gauge), HTTP requests per route and status,
and the generation and prompt throughput (tokens/s) measured between two
scrapes (since the server started, for the first scrape); then llama-server's
own ``llamacpp:*`` metrics (:func:`render_llamacpp`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Mapping

__all__ = ["ServerMetrics", "CONTENT_TYPE", "render_llamacpp"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "requests_total": "Generation requests submitted to the engine.",
    "requests_finished": "Generation requests finished normally.",
    "requests_failed": "Generation requests that failed.",
    "requests_cancelled": "Generation requests cancelled (client gone or shutdown).",
    "requests_running": "Generation requests holding a slot.",
    "queue_depth": "Generation requests waiting for a slot.",
    "slots_busy": "Slots (parallel sequences) in use.",
    "slots_total": "Slots (parallel sequences) of the context.",
    "prompt_tokens_total": "Prompt tokens of all requests.",
    "prompt_tokens_reused": "Prompt tokens served from a slot's KV cache.",
    "generated_tokens_total": "Tokens generated.",
    "decodes_total": "llama_decode calls.",
    "decode_tokens_total": "Tokens passed to llama_decode.",
    "batched_decodes_total": "Decodes that served two or more requests.",
    "draft_tokens_total": "Tokens drafted by speculative decoding.",
    "draft_accepted_total": "Drafted tokens accepted by the model.",
    "drafts_total": "Drafts verified (speculative decoding steps).",
    "kv_cells_used": "KV cache cells in use.",
    "kv_cells_total": "KV cache cells.",
}

_COUNTERS = frozenset({"requests_total", "requests_finished", "requests_failed", "requests_cancelled",
                       "prompt_tokens_total", "prompt_tokens_reused", "generated_tokens_total",
                       "decodes_total", "decode_tokens_total", "batched_decodes_total",
                       "draft_tokens_total", "draft_accepted_total", "drafts_total"})


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 2**53):
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ServerMetrics:
    """Counts HTTP requests and renders the Prometheus text. Thread-safe."""

    def __init__(self, prefix: str = "cortex_llama") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._http: Counter[tuple[str, int]] = Counter()
        self._started = time.monotonic()
        self._last: tuple[float, float, float] = (self._started, 0.0, 0.0)  # time, generated, prompt
        self._scraped: dict[str, float] = {}  # the engine's counters at the previous llamacpp scrape

    def window(self, engine: Mapping[str, float]) -> dict[str, float]:
        """The engine's counters at the previous call (empty at the first): the
        start of the window llama-server's throughput gauges average over."""
        with self._lock:
            previous, self._scraped = self._scraped, {k: float(v) for k, v in engine.items()}
        return previous

    def count_http(self, route: str, status: int) -> None:
        with self._lock:
            self._http[(route, status)] += 1

    def render(self, engine: Mapping[str, float], model: str) -> str:
        """The exposition text for ``engine`` (``LLM.metrics()``) and the HTTP counters."""
        p = self.prefix
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {p}_{name} {help_}")
            lines.append(f"# TYPE {p}_{name} {kind}")
            lines.extend(f"{p}_{name}{labels} {_num(v)}" for labels, v in samples)

        model_label = f'{{model="{_label(model)}"}}'
        for name, value in engine.items():
            kind = "counter" if name in _COUNTERS else "gauge"
            metric(name, kind, _HELP.get(name, name.replace("_", " ") + "."), [(model_label, value)])
        now = time.monotonic()
        gen = float(engine.get("generated_tokens_total", 0.0))
        prompt = float(engine.get("prompt_tokens_total", 0.0))
        with self._lock:
            t0, gen0, prompt0 = self._last
            self._last = (now, gen, prompt)
            http = sorted(self._http.items())
        dt = max(now - t0, 1e-9)
        metric("generation_tokens_per_second", "gauge",
               "Generated tokens per second since the previous scrape.",
               [(model_label, max(gen - gen0, 0.0) / dt)])
        metric("prompt_tokens_per_second", "gauge",
               "Prompt tokens per second since the previous scrape.",
               [(model_label, max(prompt - prompt0, 0.0) / dt)])
        metric("uptime_seconds", "gauge", "Seconds since the server started.", [("", now - self._started)])
        metric("http_requests_total", "counter", "HTTP requests answered, by route and status.",
               [(f'{{route="{_label(r)}",status="{s}"}}', n) for (r, s), n in http])
        return "\n".join(lines) + "\n"


def _per(n: float, d: float) -> float:
    return n / d if d > 0 else 0.0


def render_llamacpp(engine: Mapping[str, float], since: Mapping[str, float] | None = None) -> str:
    """llama-server's ``llamacpp:*`` metrics (its names, help and types) from the
    engine's counters: prompt tokens exclude those reused from the cache; the
    throughput gauges average over the window since the counters ``since`` (the
    previous scrape's, :meth:`ServerMetrics.window`; None or empty: since start), as
    llama-server's, which resets them at every scrape."""
    e = {k: float(v) for k, v in engine.items()}
    prompt_s, gen_s = e.get("prompt_us_total", 0.0) / 1e6, e.get("generation_us_total", 0.0) / 1e6
    evaluated, predicted = e.get("prompt_tokens_evaluated", 0.0), e.get("generated_tokens_total", 0.0)
    b = dict(since or {})

    def delta(name: str) -> float:
        return max(e.get(name, 0.0) - b.get(name, 0.0), 0.0)
    counters = [
        ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", evaluated),
        ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache",
         e.get("prompt_tokens_reused", 0.0)),
        ("prompt_seconds_total", "Total time spent processing prompts", prompt_s),
        ("tokens_predicted_total", "Number of generation tokens processed", predicted),
        ("tokens_predicted_seconds_total", "Total time spent generating tokens", gen_s),
        ("n_decode_total", "Total number of llama_decode() calls", e.get("decodes_total", 0.0)),
        ("n_tokens_max", "Largest observed sequence length (prompt + generation)", e.get("tokens_max", 0.0)),
        ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated",
         e.get("draft_tokens_total", 0.0)),
        ("spec_decode_num_accepted_tokens_total", "Speculative: Total draft tokens accepted by the target model",
         e.get("draft_accepted_total", 0.0)),
        ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps",
         e.get("drafts_total", 0.0)),
    ]
    gauges = [
        ("prompt_tokens_seconds", "Average prompt throughput in tokens/s",
         _per(delta("prompt_tokens_evaluated"), delta("prompt_us_total") / 1e6)),
        ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
         _per(delta("generated_tokens_total"), delta("generation_us_total") / 1e6)),
        ("requests_processing", "Number of requests processing", e.get("requests_running", 0.0)),
        ("requests_deferred", "Number of requests deferred", e.get("queue_depth", 0.0)),
        ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
         _per(e.get("decode_requests_total", 0.0), e.get("decodes_total", 0.0))),
    ]
    lines = []
    for kind, items in (("counter", counters), ("gauge", gauges)):
        for name, help_, value in items:
            lines += [f"# HELP llamacpp:{name} {help_}", f"# TYPE llamacpp:{name} {kind}",
                      f"llamacpp:{name} {_num(value)}"]
    return "\n".join(lines) + "\n"
