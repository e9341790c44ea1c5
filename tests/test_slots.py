"""Slot files (``LLM.slots``): a slot's KV cache saved, restored into another slot
and erased, with pinned requests (``GenerationParams(slot=...)``) reusing what a
restored slot holds. On a Q4_0 synthetic model, in both KV layouts."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from cortex_llama import LLM
from cortex_llama.errors import StateError
from cortex_llama.gen.slot_files import pack_tokens, unpack_tokens

PROMPT = "The quick brown fox jumps over the lazy dog near the river bank"


@pytest.fixture(scope="module", params=[False, True], ids=["per-slot", "unified"])
def llm(request: pytest.FixtureRequest, small_q4_path: Path):
    # (no prompt cache: an erased slot must come back empty, not restored from RAM)
    with LLM(small_q4_path, context_size=512, n_seq_max=3, threads=2, kv_unified=request.param,
             prompt_cache_mib=0) as m:
        yield m


def test_save_restore_into_another_slot_is_reused_and_equal(llm: LLM, tmp_path: Path) -> None:
    first = llm.complete(PROMPT, temperature=0, max_tokens=8, slot=1)
    n_prompt = first.usage.prompt_tokens
    saved = llm.slots.save(1, tmp_path / "s1.bin")
    assert saved.slot == 1 and saved.n_tokens == n_prompt + 8 - 1  # the last token is not decoded yet
    assert saved.n_bytes == (tmp_path / "s1.bin").stat().st_size > 0

    assert llm.slots.erase(0) >= 0
    restored = llm.slots.restore(0, tmp_path / "s1.bin")
    assert restored.n_tokens == saved.n_tokens and llm.slots.cached_tokens(0) == saved.n_tokens

    again = llm.complete(PROMPT, temperature=0, max_tokens=8, slot=0)
    assert again.usage.cached_tokens == n_prompt - 1  # all but the last prompt token came from the file
    assert again.tokens == first.tokens

    assert llm.slots.erase(0) == n_prompt + 7
    fresh = llm.complete(PROMPT, temperature=0, max_tokens=8, slot=0)
    assert fresh.usage.cached_tokens == 0 and fresh.tokens == first.tokens


def test_plain_token_lists_restore_and_bad_files_are_refused(llm: LLM, tmp_path: Path) -> None:
    llm.complete(PROMPT, temperature=0, max_tokens=2, slot=2)
    path = tmp_path / "s2.bin"
    saved = llm.slots.save(2, path)
    # llama.cpp's sequence file: magic, version, token count, then the tokens: rewrite the
    # packed payload as a plain list (what older llama-servers wrote)
    data = bytearray(path.read_bytes())
    count = struct.unpack_from("=I", data, 8)[0]
    words = list(struct.unpack_from(f"={count}i", data, 12))
    plain = unpack_tokens(words)
    assert pack_tokens(plain) == words and len(plain) == saved.n_tokens
    legacy = data[:8] + struct.pack("=I", len(plain)) + struct.pack(f"={len(plain)}i", *plain) + data[12 + 4 * count:]
    (tmp_path / "legacy.bin").write_bytes(legacy)
    assert llm.slots.restore(1, tmp_path / "legacy.bin").n_tokens == saved.n_tokens

    with pytest.raises(FileNotFoundError, match="missing.bin"):
        llm.slots.restore(1, tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a state file at all")
    with pytest.raises(StateError):
        llm.slots.restore(1, tmp_path / "junk.bin")
    assert llm.slots.cached_tokens(1) == 0  # a failed restore leaves the slot empty
    with pytest.raises(StateError, match="version 7"):
        unpack_tokens([-1, 7, 0, 0])
    with pytest.raises(StateError, match="image/audio"):
        unpack_tokens([-1, 1, 1, 5, 2])


def test_bad_slots_and_a_busy_slot_waits(llm: LLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"slot 3 is not in \[0, 3\)"):
        llm.slots.erase(3)
    with pytest.raises(ValueError, match=r"slot 5 is not in \[0, 3\)"):
        llm.complete(PROMPT, max_tokens=1, slot=5)
    with pytest.raises(ValueError, match="slot must be >= 0"):
        llm.complete(PROMPT, max_tokens=1, slot=-2)
    # an erase on a running slot waits for its request to end
    req = llm.submit(PROMPT, temperature=0, max_tokens=48, slot=0)
    while req.slot is None and not req.done:
        time.sleep(0.001)
    erased: list[int] = []
    t = threading.Thread(target=lambda: erased.append(llm.slots.erase(0, timeout=60)))
    t.start()
    done = req.result(timeout=60)
    t.join(60)
    assert erased == [done.usage.prompt_tokens + len(done.tokens) - 1]
