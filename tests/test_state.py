"""Saving and restoring context state gives identical next-token logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cortex_llama import Context, Model, StateError

from .helpers import prefill


def _next_logits(ctx: Context, tok: int, pos: int, seq: int = 0) -> np.ndarray:
    b = ctx.new_batch()
    b.add(tok, pos, seq, logits=True)
    ctx.decode(b)
    return ctx.logits_copy()


def test_whole_state_bytes_and_file(tiny: Model, tmp_path: Path) -> None:
    toks = tiny.tokenize("state save and restore")
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        prefill(ctx, toks)
        blob = ctx.state_bytes()
        ctx.save_state(tmp_path / "s.bin", toks)
        expected = _next_logits(ctx, 300, len(toks))
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        ctx.load_state_bytes(blob)
        np.testing.assert_array_equal(_next_logits(ctx, 300, len(toks)), expected)
    with Context(tiny, n_ctx=256, n_threads=2) as ctx:
        loaded = ctx.load_state(tmp_path / "s.bin")
        assert list(loaded) == list(toks)
        np.testing.assert_array_equal(_next_logits(ctx, 300, len(toks)), expected)


def test_per_sequence_state(tiny: Model, tmp_path: Path) -> None:
    toks = tiny.tokenize("one sequence only")
    with Context(tiny, n_ctx=256, n_seq_max=2, n_threads=2) as ctx:
        prefill(ctx, toks, seq_id=0)
        blob = ctx.state_bytes(seq_id=0)
        ctx.save_state(tmp_path / "seq.bin", toks, seq_id=0)
        expected = _next_logits(ctx, 200, len(toks), 0)
        ctx.clear()
        ctx.load_state_bytes(blob, seq_id=1)
        assert ctx.seq_pos_max(1) == len(toks) - 1
        np.testing.assert_allclose(_next_logits(ctx, 200, len(toks), 1), expected, rtol=1e-5, atol=1e-5)
        ctx.clear()
        assert list(ctx.load_state(tmp_path / "seq.bin", seq_id=1)) == list(toks)
        np.testing.assert_allclose(_next_logits(ctx, 200, len(toks), 1), expected, rtol=1e-5, atol=1e-5)


def test_bad_state(tiny: Model, tmp_path: Path) -> None:
    with Context(tiny, n_ctx=128, n_threads=2) as ctx:
        with pytest.raises(FileNotFoundError):
            ctx.load_state(tmp_path / "missing.bin")
        junk = tmp_path / "junk.bin"
        junk.write_bytes(b"\x00" * 64)
        with pytest.raises(StateError):
            ctx.load_state(junk)
        with pytest.raises(StateError):
            ctx.load_state_bytes(b"garbage!" * 4)
        # still usable
        prefill(ctx, tiny.tokenize("ok"))
