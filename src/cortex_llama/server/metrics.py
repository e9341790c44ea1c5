"""Prometheus text exposition of the engine's counters and the server's own.

``GET /metrics`` answers the text format (version 0.0.4): every engine counter
of :meth:`cortex_llama.LLM.metrics` as ``cortex_llama_<name>`` (a counter when
the name ends in ``_total``, else a gauge), HTTP requests per route and status,
and the generation and prompt throughput (tokens/s) measured between two
scrapes (since the server started, for the first scrape).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Mapping

__all__ = ["ServerMetrics", "CONTENT_TYPE"]

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
    "kv_cells_used": "KV cache cells in use.",
    "kv_cells_total": "KV cache cells.",
}

_COUNTERS = frozenset({"requests_total", "requests_finished", "requests_failed", "requests_cancelled",
                       "prompt_tokens_total", "prompt_tokens_reused", "generated_tokens_total",
                       "decodes_total", "decode_tokens_total", "batched_decodes_total"})


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
