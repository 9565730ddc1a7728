"""UsageTap: usage read off relayed bodies and streams, however the network splits them."""

from __future__ import annotations

import json

import pytest

from service.governance.store.base import Usage
from service.governance.usage import UsageTap


def events(*data: object) -> bytes:
    return b"".join(b"data: " + json.dumps(d, separators=(",", ":")).encode() + b"\n\n" for d in data)


STREAM = (
    events(
        {"choices": [{"index": 0, "delta": {"content": "Pa"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "ris"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    )
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 7, 40, 64, len(STREAM)])
@pytest.mark.parametrize("drop", [False, True])
def test_usage_and_finish_reasons_however_the_stream_is_split(size: int, drop: bool) -> None:
    tap = UsageTap(True, drop_usage_event=drop, finish_reasons=True)
    passed = b"".join(tap.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size)) + tap.finish()
    assert tap.usage == Usage(5, 2)
    if drop:  # the usage-only event the client did not ask for is gone, everything else is intact
        assert passed == STREAM.replace(events({"choices": [], "usage": tap_usage_body()}), b"")
    else:
        assert passed == STREAM


def test_finish_reasons_of_a_stream_relayed_event_by_event() -> None:
    tap = UsageTap(True, finish_reasons=True)
    for event in STREAM.split(b"\n\n")[:-1]:
        assert tap.feed(event + b"\n\n") == event + b"\n\n"
    assert tap.finish_reasons == ["stop"] and tap.usage == Usage(5, 2)


def tap_usage_body() -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_a_json_body_carries_its_usage_and_finish_reason() -> None:
    body = {
        "choices": [{"index": 0, "message": {"content": "Paris"}, "finish_reason": "length"}],
        "usage": tap_usage_body(),
    }
    raw = json.dumps(body).encode()
    tap = UsageTap(False, finish_reasons=True)
    assert tap.feed(raw[:10]) + tap.feed(raw[10:]) + tap.finish() == raw
    assert tap.usage == Usage(5, 2) and tap.finish_reasons == ["length"]


# -- Anthropic's Messages API ------------------------------------------------------


def anthropic_events(*data: dict[str, object]) -> bytes:
    return b"".join(
        f"event: {d['type']}\n".encode() + b"data: " + json.dumps(d, separators=(",", ":")).encode() + b"\n\n"
        for d in data
    )


def message_start(usage: dict[str, int]) -> dict[str, object]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": usage}
    return {"type": "message_start", "message": message}


def text_delta(text: str) -> dict[str, object]:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}


def message_delta(usage: dict[str, int]) -> dict[str, object]:
    return {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}


ANTHROPIC_STREAM = anthropic_events(
    message_start({"input_tokens": 9, "output_tokens": 0}),
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    text_delta("Pa"),
    text_delta("ris"),
    {"type": "content_block_stop", "index": 0},
    message_delta({"input_tokens": 9, "output_tokens": 2}),
    {"type": "message_stop"},
)


def relay(tap: UsageTap, stream: bytes, size: int) -> bytes:
    passed = b"".join(tap.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    return passed + tap.finish()


@pytest.mark.parametrize("size", [1, 13, 64, len(ANTHROPIC_STREAM)])
def test_an_anthropic_stream_is_charged_and_passed_on_whole(size: int) -> None:
    # Paddock asks for OpenAI's usage chunk on every stream (drop_usage_event): Anthropic's have none to drop.
    tap = UsageTap(True, drop_usage_event=True, keep_text=True, finish_reasons=True)
    assert relay(tap, ANTHROPIC_STREAM, size) == ANTHROPIC_STREAM
    assert tap.usage == Usage(9, 2)
    assert tap.completion() == "Paris"
    assert tap.finish_reasons == ["end_turn"]


def test_a_message_delta_without_input_tokens_keeps_message_starts() -> None:
    stream = anthropic_events(
        message_start({"input_tokens": 12, "cache_read_input_tokens": 30, "output_tokens": 1}),
        text_delta("hi"),
        message_delta({"output_tokens": 5}),
    )
    tap = UsageTap(True)
    relay(tap, stream, 17)
    assert tap.usage == Usage(42, 5)  # cached input counts: Anthropic keeps it out of input_tokens


def test_an_anthropic_message_body() -> None:
    body = {
        "type": "message",
        "content": [{"type": "text", "text": "Paris"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 20, "output_tokens": 4, "cache_creation_input_tokens": 3},
    }
    tap = UsageTap(False, keep_text=True, finish_reasons=True)
    relay(tap, json.dumps(body).encode(), 10)
    assert (tap.usage, tap.completion(), tap.finish_reasons) == (Usage(23, 4), "Paris", ["tool_use"])


def test_a_token_count_generated_nothing() -> None:
    tap = UsageTap(False)
    relay(tap, b'{"input_tokens": 311, "context_management": {"original_input_tokens": 311}}', 8)
    assert tap.usage == Usage(0, 0)


def test_a_matched_stop_string_in_openai_chunks_is_not_a_finish_reason() -> None:
    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}
    tap = UsageTap(True, finish_reasons=True)
    relay(tap, events(chunk), 1000)
    assert tap.finish_reasons == ["stop"]
