"""llama.cpp's performance counters of a :class:`Context`, and its warm-up run
(which pages the weights in and leaves the counters cleared)."""

from __future__ import annotations

from ._lib import lib
from .context_base import ContextBase

__all__ = ["ContextPerf"]


class ContextPerf(ContextBase):
    """The perf-counter and warm-up methods of a :class:`~cortex_llama.context.Context`
    (a base class of it; see :class:`ContextBase`)."""

    def warmup(self) -> None:
        """llama.cpp's warm-up run (``common_init_from_params``'s, what its tools'
        ``--no-warmup`` turns off): BOS and EOS decoded once (through the encoder
        first for an encoder-decoder model), then the KV cache and the perf counters
        cleared. The first request then finds the weights paged in and the compute
        buffers allocated; outputs do not change. Raises like :meth:`decode`."""
        model = self.model
        vocab = model.vocab
        tokens = [t for t in (vocab.bos, vocab.eos) if t is not None] or [0]
        batch = self.new_batch(len(tokens), 1)
        if model.has_encoder:
            batch.add_many(tokens, 0, 0, logits=False)
            self.encode(batch)
            start = model.decoder_start_token
            tokens = [start if start is not None else tokens[0]]
        if model.has_decoder:
            batch.clear()
            batch.add_many(tokens[: self.n_batch], 0, 0, logits="last")
            self.decode(batch)
        self.clear()
        lib.llama_synchronize(self.handle)
        self.perf_reset()

    def perf(self) -> dict[str, float]:
        """llama.cpp's timing counters (ms) and token counts."""
        d = lib.llama_perf_context(self.handle)
        return {"t_start_ms": d.t_start_ms, "t_load_ms": d.t_load_ms,
                "t_p_eval_ms": d.t_p_eval_ms, "t_eval_ms": d.t_eval_ms,
                "n_p_eval": d.n_p_eval, "n_eval": d.n_eval, "n_reused": d.n_reused}

    def perf_reset(self) -> None:
        lib.llama_perf_context_reset(self.handle)
