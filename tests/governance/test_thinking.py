"""Reasoning levers on the Anthropic Messages API: the effort cap and the thinking budget."""

from __future__ import annotations

from typing import Any

import pytest

from service.governance.params import shape_request
from service.governance.policy import Parameters
from service.governance.refusal import Refusal
from service.protocol.routes import COUNT_TOKENS, MESSAGES

BODY = {"model": "m", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}


def shaped(body: dict[str, Any], route: str = MESSAGES, **params: Any) -> dict[str, Any]:
    return shape_request(route, body, Parameters(**params), max_model_len=8192, cache_salt=None).body


def refused(body: dict[str, Any], **params: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        shaped(body, **params)
    return caught.value


@pytest.mark.parametrize(
    ("asked", "cap", "sent"),
    [
        ("max", "medium", "medium"),
        ("low", "high", "low"),
        (None, "high", "medium"),
        (None, "low", "low"),
        ("max", "xhigh", "xhigh"),
    ],
)
def test_output_config_effort_is_lowered_to_the_cap(asked: str | None, cap: str, sent: str) -> None:
    body = {**BODY, **({"output_config": {"effort": asked, "format": None}} if asked else {})}
    out = shaped(body, max_reasoning_effort=cap)
    assert out["output_config"]["effort"] == sent
    counted = {k: v for k, v in body.items() if k != "max_tokens"}
    assert shaped(counted, COUNT_TOKENS, max_reasoning_effort=cap)["output_config"]["effort"] == sent
    if asked:
        assert body["output_config"]["effort"] == asked  # the client's body is never mutated


@pytest.mark.parametrize("cap", ["none", "minimal"])
def test_a_cap_below_low_turns_thinking_off(cap: str) -> None:
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 2048}, "output_config": {"effort": "high"}}
    out = shaped(body, max_reasoning_effort=cap)
    assert out["thinking"] == {"type": "disabled"} and "effort" not in out.get("output_config", {})


def test_without_a_cap_effort_and_thinking_pass_untouched() -> None:
    body = {**BODY, "thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}
    out = shaped(body)
    assert (out["thinking"], out["output_config"]) == (body["thinking"], body["output_config"])


def test_an_unknown_effort_under_a_cap_is_a_400_naming_it() -> None:
    refusal = refused({**BODY, "output_config": {"effort": "none"}}, max_reasoning_effort="low")
    assert refusal.status == 400 and refusal.param == "output_config.effort"


def test_the_thinking_budget_stays_below_a_clamped_max_tokens() -> None:
    """The output cap lowers max_tokens; vLLM would then refuse a budget it no longer fits under."""
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 3000}}
    out = shaped(body, max_output_tokens=2048)
    assert (out["max_tokens"], out["thinking"]["budget_tokens"]) == (2048, 2047)
    assert shaped(body)["thinking"]["budget_tokens"] == 3000  # it fits: untouched


def test_a_cap_that_leaves_no_room_for_thinking_is_a_clear_400() -> None:
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    refusal = refused(body, max_output_tokens=512)
    assert refusal.param == "thinking.budget_tokens" and "512" in refusal.message
