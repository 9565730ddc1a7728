"""Reasoning on the Anthropic Messages API, on the DeepSeek twin, with the anthropic SDK.

DeepSeek's chat template opens ``<think>`` in the prompt, so everything the random twin writes
before a ``</think>`` (it never writes one) is reasoning to vLLM's ``deepseek_r1`` parser: the
Messages layer must answer it as a ``thinking`` block, streamed as ``thinking_delta`` events.
"""

from __future__ import annotations

import anthropic
import pytest

from harness import twins
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

MODEL = twins.TWINS["deepseek-v3"].model_id
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


def client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.keys["acme"], max_retries=0)


def test_reasoning_is_a_thinking_block(twin_stack: Stack) -> None:
    answer = client(twin_stack).messages.create(
        model=MODEL,
        max_tokens=16,
        messages=HELLO,
        extra_body={"temperature": 0},  # type: ignore[arg-type]
    )
    kinds = [block.type for block in answer.content]
    assert kinds and kinds[0] == "thinking", kinds
    assert answer.content[0].thinking  # type: ignore[union-attr]
    assert answer.usage.output_tokens == 16 and answer.stop_reason == "max_tokens"


def test_reasoning_is_streamed_as_thinking_deltas(twin_stack: Stack) -> None:
    with client(twin_stack).messages.stream(
        model=MODEL,
        max_tokens=16,
        messages=HELLO,
        extra_body={"temperature": 0},  # type: ignore[arg-type]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"]
    assert "".join(deltas) and final.content[0].type == "thinking"
    assert "".join(deltas) == final.content[0].thinking  # type: ignore[union-attr]
