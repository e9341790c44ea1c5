"""Which server requests are submitted on the event loop (pure logic, no model)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from cortex_llama.server.plumbing import INLINE_PROMPT_CHARS, light_messages, light_prompts  # noqa: E402


def test_short_prompts_are_light_and_long_ones_are_not() -> None:
    assert light_prompts(["hello", [1, 2, 3]])
    assert not light_prompts(["x" * (INLINE_PROMPT_CHARS + 1)])
    assert not light_prompts(["x" * (INLINE_PROMPT_CHARS // 2 + 1)] * 2)


def test_text_messages_are_light_media_and_long_text_are_not() -> None:
    text = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]}]
    assert light_messages(text)
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                          {"type": "image_url", "image_url": {"url": "a.png"}}]}]
    assert not light_messages(image)
    assert not light_messages([{"role": "user", "content": "x" * (INLINE_PROMPT_CHARS + 1)}])
