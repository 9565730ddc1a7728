"""Anthropic's Messages API through the real stack, with the anthropic SDK as the client.

vLLM's own Anthropic layer answers behind Paddock's governance: the same keys (``x-api-key``), allow-lists,
limits, kills and audit as the OpenAI routes, and errors in Anthropic's shape.
"""

from __future__ import annotations

import threading
import time

import anthropic
import pytest

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}  # the SDK no longer takes sampling parameters; the API (and vLLM) still does
STORY = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(stack, key: str = "acme", **kw: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.keys[key], max_retries=0, **kw)  # type: ignore[arg-type]


def error_of(error: anthropic.APIStatusError) -> dict[str, object]:
    assert error.response.headers["content-type"].startswith("application/json")
    payload = error.response.json()
    assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
    return payload["error"]


def usage_row(stack, tenant: str) -> dict[str, int]:
    rows = {row["tenant"]: row for row in stack.admin("GET", "/admin/v1/usage")[1]["usage"]}
    return rows.get(tenant, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})


def test_a_message_answers_paris_and_is_charged(stack) -> None:
    before = usage_row(stack, "globex")
    reply = client(stack, "globex").messages.create(model=CHAT, max_tokens=30, messages=FRANCE, extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == CHAT
    assert "Paris" in "".join(block.text for block in reply.content if block.type == "text")
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens > 5 and reply.usage.output_tokens > 0
    after = usage_row(stack, "globex")
    assert after["requests"] == before["requests"] + 1
    assert after["prompt_tokens"] - before["prompt_tokens"] == reply.usage.input_tokens
    assert after["completion_tokens"] - before["completion_tokens"] == reply.usage.output_tokens
    completed = [r for r in stack.audit_records() if r.get("phase") == "completed" and r.get("route") == "/v1/messages"]
    assert completed and completed[-1]["status"] == 200


def test_a_stream_is_anthropics_events_and_is_charged(stack) -> None:
    api = client(stack, "globex")
    whole = api.messages.create(model=CHAT, max_tokens=40, messages=FRANCE, extra_body=GREEDY, system="Be brief.")
    before = usage_row(stack, "globex")
    with api.messages.stream(
        model=CHAT, max_tokens=40, messages=FRANCE, extra_body=GREEDY, system="Be brief."
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text == whole.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens
    after = usage_row(stack, "globex")
    assert after["completion_tokens"] - before["completion_tokens"] == final.usage.output_tokens
    assert after["prompt_tokens"] - before["prompt_tokens"] == whole.usage.input_tokens


def test_a_named_tool_choice_returns_a_tool_use_block(stack) -> None:
    reply = client(stack).messages.create(
        model=CHAT,
        max_tokens=120,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    uses = [block for block in reply.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict)
    assert uses[0].id and reply.stop_reason == "tool_use"


def test_count_tokens_counts_with_the_chat_template(stack) -> None:
    api = client(stack)
    counted = api.messages.count_tokens(model=CHAT, messages=FRANCE)
    reply = api.messages.create(model=CHAT, max_tokens=1, messages=FRANCE)
    assert counted.input_tokens == reply.usage.input_tokens > 5
    # SmolLM2's template adds its own system prompt when none is given: compare two of ours
    short = api.messages.count_tokens(model=CHAT, messages=FRANCE, system="Be brief.")
    longer = api.messages.count_tokens(model=CHAT, messages=FRANCE, system="Be brief. Answer like a geographer would.")
    assert longer.input_tokens > short.input_tokens


def test_a_bad_key_is_401_in_anthropics_shape(stack) -> None:
    bad = anthropic.Anthropic(base_url=stack.base_url, api_key="pk-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(model=CHAT, max_tokens=5, messages=FRANCE)
    assert caught.value.status_code == 401
    assert error_of(caught.value)["type"] == "authentication_error"
    assert caught.value.request_id  # Anthropic's SDK reads ``request-id``


def test_a_disabled_tenant_is_403_and_a_model_not_allowed_is_404(stack) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        client(stack, "frozen").messages.create(model=CHAT, max_tokens=5, messages=FRANCE)
    assert error_of(denied.value)["type"] == "permission_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(stack, "globex").messages.create(model=EMBED, max_tokens=5, messages=FRANCE)  # not globex's
    assert error_of(missing.value)["type"] == "not_found_error"
    assert EMBED in str(error_of(missing.value)["message"])


def test_a_parameter_over_the_keys_cap_is_400(stack) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(stack, "strict").messages.create(model=CHAT, max_tokens=100, messages=FRANCE)
    error = error_of(caught.value)
    assert error["type"] == "invalid_request_error" and "max_tokens" in str(error["message"])


def _stream_story(stack, events: list[object], started: threading.Event, failure: list[BaseException]) -> None:
    try:
        with client(stack, "acme-kill", timeout=120).messages.stream(
            model=CHAT, max_tokens=1500, messages=STORY, extra_body={"temperature": 1.0}
        ) as stream:
            for event in stream:
                events.append(event)
                if event.type == "content_block_delta":
                    started.set()
    except anthropic.APIStatusError as error:
        failure.append(error)
    finally:
        started.set()


def test_the_kill_switch_ends_a_stream_with_an_error_event(stack) -> None:
    events: list[object] = []
    failure: list[BaseException] = []
    started = threading.Event()
    reader = threading.Thread(target=_stream_story, args=(stack, events, started, failure))
    reader.start()
    try:
        assert started.wait(60)
        status, _ = stack.admin("POST", "/admin/v1/disable", {"scope": "key", "id": "key-acme-kill", "reason": "e2e"})
        assert status == 200
        killed_at = time.monotonic()
        reader.join(10)
        assert not reader.is_alive() and time.monotonic() - killed_at < 1.5
        assert failure, f"the stream ended on its own ({len(events)} events) before the kill"
        body = failure[0].body  # type: ignore[attr-defined]
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
        assert "disabled by its operators" in body["error"]["message"]
        with pytest.raises(anthropic.APIStatusError) as after:
            client(stack, "acme-kill").messages.create(model=CHAT, max_tokens=2, messages=FRANCE)
        assert after.value.status_code == 529 and after.value.response.headers["x-should-retry"] == "false"
        assert error_of(after.value)["type"] == "overloaded_error"
    finally:
        stack.admin("POST", "/admin/v1/enable", {"scope": "key", "id": "key-acme-kill"})
        reader.join(30)
