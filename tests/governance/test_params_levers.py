"""The parameter policy's reasoning-effort cap, built-in tool switch and refusal of stored-response state."""

from __future__ import annotations

from typing import Any

import pytest

from service.governance.params import shape_request
from service.governance.policy import Parameters
from service.governance.refusal import Refusal
from service.protocol.routes import CHAT, COMPLETIONS, RESPONSES

USER_HI = [{"role": "user", "content": "hi"}]
CHAT_BODY = {"model": "m", "messages": USER_HI}
RESPONSES_BODY = {"model": "m", "input": "hi"}


def shaped(route: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    return shape_request(route, body, Parameters(**params), max_model_len=4096, cache_salt=None).body


def refused(route: str, body: dict[str, Any], **params: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        shaped(route, body, **params)
    return caught.value


@pytest.mark.parametrize(
    ("asked", "cap", "sent"),
    [
        ("high", "low", "low"),
        ("max", "medium", "medium"),
        ("minimal", "low", "minimal"),
        ("none", "none", "none"),
        (None, "high", "medium"),
        (None, "low", "low"),
    ],
)
def test_reasoning_effort_is_lowered_to_the_cap_in_chat_and_responses(asked: str | None, cap: str, sent: str) -> None:
    chat = {**CHAT_BODY, **({"reasoning_effort": asked} if asked else {})}
    assert shaped(CHAT, chat, max_reasoning_effort=cap)["reasoning_effort"] == sent
    responses = {**RESPONSES_BODY, **({"reasoning": {"effort": asked, "summary": "auto"}} if asked else {})}
    out = shaped(RESPONSES, responses, max_reasoning_effort=cap)
    assert out["reasoning"]["effort"] == sent
    if asked:
        assert out["reasoning"]["summary"] == "auto"
        assert responses["reasoning"]["effort"] == asked  # the client's body is never mutated


def test_without_a_cap_reasoning_effort_passes_untouched() -> None:
    assert "reasoning_effort" not in shaped(CHAT, CHAT_BODY)
    assert shaped(CHAT, {**CHAT_BODY, "reasoning_effort": "max"})["reasoning_effort"] == "max"
    assert "reasoning_effort" not in shaped(COMPLETIONS, {"model": "m", "prompt": "x"}, max_reasoning_effort="low")


def test_an_unknown_effort_under_a_cap_is_a_400_naming_it() -> None:
    refusal = refused(CHAT, {**CHAT_BODY, "reasoning_effort": "extreme"}, max_reasoning_effort="low")
    assert refusal.status == 400 and refusal.param == "reasoning_effort"
    assert refused(RESPONSES, {**RESPONSES_BODY, "reasoning": "high"}, max_reasoning_effort="low").param == "reasoning"


@pytest.mark.parametrize(
    ("field", "value"),
    [("background", True), ("store", True), ("previous_response_id", "resp_1"), ("conversation", "conv_1")],
)
def test_responses_that_need_a_stored_response_are_refused_with_a_400(field: str, value: Any) -> None:
    refusal = refused(RESPONSES, {**RESPONSES_BODY, field: value})
    assert refusal.status == 400 and refusal.param == field
    assert "stores no responses" in refusal.message


def test_store_false_and_no_store_pass() -> None:
    assert shaped(RESPONSES, {**RESPONSES_BODY, "store": False})["store"] is False
    assert "store" not in shaped(RESPONSES, RESPONSES_BODY)


def test_builtin_tools_are_off_unless_the_policy_names_them() -> None:
    function = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = {**RESPONSES_BODY, "tools": [function, {"type": "code_interpreter", "container": {"type": "auto"}}]}
    refusal = refused(RESPONSES, body)
    assert refusal.param == "tools[1].type" and "code_interpreter" in refusal.message
    assert shaped(RESPONSES, body, builtin_tools=["code_interpreter"])["tools"] == body["tools"]
    assert shaped(RESPONSES, {**RESPONSES_BODY, "tools": [function]})["tools"] == [function]
    mcp = {**RESPONSES_BODY, "tools": [{"type": "mcp", "server_label": "x", "server_url": "http://x"}]}
    assert refused(RESPONSES, mcp, builtin_tools=["code_interpreter"]).param == "tools[0].type"


def test_chat_web_search_needs_the_web_search_switch() -> None:
    body = {**CHAT_BODY, "web_search_options": {}}
    assert refused(CHAT, body).param == "web_search_options"
    assert shaped(CHAT, body, builtin_tools=["web_search"])["web_search_options"] == {}


@pytest.mark.parametrize(
    ("system", "sent"),
    [
        (None, "Be Acme."),
        ("Be brief.", "Be Acme.\n\nBe brief."),
        (
            [{"type": "text", "text": "Be brief."}],
            [{"type": "text", "text": "Be Acme."}, {"type": "text", "text": "Be brief."}],
        ),
    ],
)
def test_the_mandatory_system_prompt_reaches_anthropic_messages(system: Any, sent: Any) -> None:
    from service.protocol.routes import MESSAGES

    body = {"model": "m", "max_tokens": 5, "messages": USER_HI, **({"system": system} if system else {})}
    assert shaped(MESSAGES, body, system_prompt="Be Acme.")["system"] == sent
