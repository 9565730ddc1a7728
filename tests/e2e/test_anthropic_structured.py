"""Structured outputs on the Anthropic Messages API, through governance, with the anthropic SDK."""

from __future__ import annotations

import json

import anthropic
import pytest

from tests.e2e.conftest import CHAT, Stack

pytestmark = pytest.mark.e2e

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}]


def client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.keys["acme"], max_retries=0)


def test_output_config_json_schema_holds(stack: Stack) -> None:
    answer = client(stack).messages.create(
        model=CHAT,
        max_tokens=48,
        messages=ASK,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}, "temperature": 0},
    )
    text = "".join(block.text for block in answer.content if block.type == "text")
    assert isinstance(json.loads(text)["city"], str), text


def test_output_config_json_schema_holds_streamed(stack: Stack) -> None:
    with client(stack).messages.stream(
        model=CHAT,
        max_tokens=48,
        messages=ASK,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}, "temperature": 0},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert isinstance(json.loads(text)["city"], str), text
    assert final.stop_reason in ("end_turn", "max_tokens")
