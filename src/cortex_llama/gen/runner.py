"""The runner: applies a :class:`StepPlan` to the ``Context`` and decodes it.

KV operations go to ``seq_rm``/``seq_cp`` (and the prompt cache's to
``state_bytes``/``load_state_bytes``); the step's LoRA scales to
``set_loras`` when they change; media spans to the projector (encode,
then decode the embeddings at their cells); the token spans of the step to one
``llama_decode`` (the single-token fast path when the step is one token). Every
C call reports through the context's one rc-to-exception check
(:func:`cortex_llama.errors.raise_for_decode`), so a full cache is a
:class:`KVCacheFullError` for media and tokens alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..batch import Batch
from ..context import Context
from .lora import LoraSet
from .prompt_cache import PromptCache
from .scheduler import KVOp, Span, StepPlan

__all__ = ["Runner", "Executed"]


@dataclass(init=False, slots=True)
class Executed:
    """What a step did: ``outputs`` are (span, batch row, output index) for the
    spans whose logits were computed (a span with a draft has its rows and
    output indices from these on, one per entry); ``done`` the spans evaluated;
    ``failed`` (spans, exception) for what could not be."""

    outputs: list[tuple[Span, int, int]]
    done: list[Span]
    failed: list[tuple[list[Span], BaseException]]
    n_tokens: int
    n_decodes: int
    #: the token decode's rows and seconds (0 when the step decoded no tokens)
    decode_rows: int
    decode_s: float

    def __init__(self) -> None:  # (written out: one is made per step, and this is the cheapest)
        self.outputs = []
        self.done = []
        self.failed = []
        self.n_tokens = self.n_decodes = self.decode_rows = 0
        self.decode_s = 0.0


class Runner:
    """Executes plans on ``ctx`` (and ``projector`` for media), from one thread."""

    def __init__(self, ctx: Context, projector: Any = None, *, per_slot: bool,
                 loras: LoraSet | None = None, prompt_cache: PromptCache | None = None) -> None:
        self.ctx = ctx
        self.projector = projector
        self.per_slot = per_slot
        self.loras = loras
        self.prompt_cache = prompt_cache
        self._batch: Batch = ctx.new_batch()
        self._lora_key: tuple[float, ...] = (0.0,) * len(loras.adapters) if loras else ()

    def apply(self, ops: list[KVOp]) -> None:
        """Run KV operations in order."""
        ctx = self.ctx
        for op in ops:
            if op.kind == "clear":
                ctx.seq_rm(op.seq_id, -1, -1)
            elif op.kind == "trim":
                ctx.seq_rm(op.seq_id, op.start, -1)
            elif op.kind == "save":
                assert self.prompt_cache is not None
                tokens, lora_key = op.payload
                self.prompt_cache.put(tokens, lora_key, ctx.state_bytes(op.seq_id))
            elif op.kind == "restore":
                ctx.load_state_bytes(op.payload.data, op.seq_id)
            elif op.kind == "copy":
                if self.per_slot:  # another stream: llama.cpp copies whole streams only
                    ctx.seq_cp(op.src, op.seq_id, -1, -1)
                else:  # the same cells gain this sequence: nothing is computed
                    ctx.seq_cp(op.src, op.seq_id, 0, op.start)
            else:
                raise ValueError(f"unknown KV operation {op.kind!r}")

    def execute(self, plan: StepPlan) -> Executed:
        """Apply ``plan``'s ops, evaluate its media spans, then decode its token
        spans together. Failures are reported in the result, not raised."""
        if plan.ops:
            self.apply(plan.ops)
        spans = plan.spans
        if spans and plan.lora_key != self._lora_key and self.loras is not None:
            self.ctx.set_loras(self.loras.applied(plan.lora_key))  # the step's LoRA scales
            self._lora_key = plan.lora_key
        result = Executed()
        tokens: list[Span] = []
        for span in spans:
            if span.is_media:
                self._eval_media(span, result)
            else:
                tokens.append(span)
        if tokens:
            self._decode(tokens, result)
        return result

    def _eval_media(self, span: Span, result: Executed) -> None:
        job = span.job
        req: Any = job.req
        try:
            self.projector.eval_chunk(self.ctx, req.media[span.start], span.start, job.slot.seq_id)
        except BaseException as exc:  # noqa: BLE001 - this request's failure only
            result.failed.append(([span], exc))
            return
        result.done.append(span)
        result.n_tokens += span.n
        result.n_decodes += 1

    def _decode(self, spans: list[Span], result: Executed) -> None:
        ctx = self.ctx
        t0 = time.perf_counter()
        try:
            span = spans[0]
            if len(spans) == 1 and span.n == 1 and not span.draft:  # the single-token fast path
                job = span.job
                ctx.decode_one(job.feed[span.start], span.start, job.slot.seq_id)
                outputs = [(span, 0, 0)]
                n_tokens = 1
            else:
                outputs = []
                n_tokens = self._fill(spans, outputs)
                ctx.decode(self._batch)
        except BaseException as exc:  # noqa: BLE001 - the step's failure, handled by the engine
            result.failed.append((spans, exc))
            return
        result.decode_s = time.perf_counter() - t0
        result.decode_rows = n_tokens
        result.outputs += outputs
        result.done += spans
        result.n_tokens += n_tokens
        result.n_decodes += 1

    def _fill(self, spans: list[Span], outputs: list[tuple[Span, int, int]]) -> int:
        """Put ``spans`` into the batch; (span, row, output index) of those with logits."""
        batch = self._batch
        batch.clear()
        # every request's next token in one vectorized add (most of a step)
        singles = [s for s in spans if s.n == 1 and s.last and not s.draft]
        if singles:
            batch.add_many([s.job.feed[s.start] for s in singles], [s.start for s in singles],
                           [s.job.slot.seq_id for s in singles], logits=True)
            outputs += [(s, i, i) for i, s in enumerate(singles)]
        n_out = len(singles)
        for s in spans:
            if s.draft:  # the newest token, then its draft: logits at every row
                rows = batch.add_many([s.job.feed[s.start], *s.draft], s.start, s.job.slot.seq_id, logits=True)
                outputs.append((s, rows.start, n_out))
                n_out += rows.stop - rows.start
                continue
            if s.n == 1 and s.last:
                continue
            rows = batch.add_many(s.job.feed[s.start: s.start + s.n], s.start, s.job.slot.seq_id,
                                  logits="last" if s.last else False)
            if s.last:
                outputs.append((s, rows.stop - 1, n_out))
                n_out += 1
        return batch.n_tokens
