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
