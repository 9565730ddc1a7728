"""Tools, structured outputs and the warmed paths of the default SmolLM2, through the stack with the openai SDK.

The default model carries `tool_call_parser: hermes` and Paddock's tool-aware chat template, so a
newcomer's first `tool_choice: "required"` or named-function call returns a real `tool_calls` entry.
A 135M model's arguments are not good arguments; what is asserted is the API's shape.
"""

from __future__ import annotations

import json
import time

import openai
import pytest

CHAT = "smollm2-135m-instruct"
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


def test_tool_choice_required_returns_a_tool_call(stack) -> None:
    reply = stack.client().chat.completions.create(
        model=CHAT, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=120, temperature=0
    )
    calls = reply.choices[0].message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert calls[0].id and isinstance(calls[0].function.arguments, str)
    assert reply.choices[0].finish_reason == "tool_calls"


def test_a_named_function_is_the_one_called(stack) -> None:
    reply = stack.client().chat.completions.create(
        model=CHAT,
        messages=WEATHER,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=120,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls and {call.function.name for call in calls} == {"get_time"}


def test_streamed_tool_call_deltas_assemble_into_a_call(stack) -> None:
    stream = stack.client().chat.completions.create(
        model=CHAT,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=120,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[delta.index] = names.get(delta.index, "") + delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
    assert names and set(names.values()) == {"get_weather"}
    assert all(arguments.get(index) for index in names)
    assert usage is not None and usage.completion_tokens > 0


def test_tool_choice_none_and_auto_answer(stack) -> None:
    client = stack.client()
    for choice in ("none", "auto"):
        reply = client.chat.completions.create(
            model=CHAT, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice=choice, max_tokens=20, temperature=0
        )
        message = reply.choices[0].message
        assert message.content or message.tool_calls
        if choice == "none":
            assert not message.tool_calls


def test_a_tool_result_turn_renders_and_answers(stack) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
    ]
    reply = stack.client().chat.completions.create(
        model=CHAT, messages=messages, tools=[WEATHER_TOOL], max_tokens=20, temperature=0
    )
    assert reply.choices[0].message.content


def test_json_schema_output_parses_against_its_schema(stack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    reply = stack.client().chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Name the capital of France as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}},
        max_tokens=40,
        temperature=0,
    )
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"city"} and isinstance(value["city"], str)


def test_a_schema_that_does_not_compile_is_a_400_naming_the_field(stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model=CHAT,
            messages=WEATHER,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            max_tokens=10,
        )
    assert caught.value.body["param"] == "response_format.json_schema.schema"
    assert "does not compile" in caught.value.body["message"]


def test_the_first_logprobs_request_is_already_warm(stack) -> None:
    """The replica warmed the logprobs path before announcing itself (cold, the first such request took 15-20 s).

    Not a benchmark: the bound is ten times the warm figure, to catch a cold compile on a user's request.
    """
    started = time.monotonic()
    reply = stack.client().chat.completions.create(
        model=CHAT, messages=WEATHER, max_tokens=2, logprobs=True, top_logprobs=2, temperature=0
    )
    assert reply.choices[0].logprobs.content
    assert time.monotonic() - started < 5.0


def test_responses_refuse_stored_state(stack) -> None:
    client = stack.client()
    for field, value in (("store", True), ("background", True), ("previous_response_id", "resp_1")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=CHAT, input="hi", max_output_tokens=5, **{field: value})
        assert caught.value.body["param"] == field and "stores no responses" in caught.value.body["message"]


def test_a_strict_tool_gets_arguments_valid_against_its_schema(stack) -> None:
    """With `strict: true`, vLLM's structural tag pins the arguments to the tool's schema too."""
    strict = {
        "type": "function",
        "function": {
            **WEATHER_TOOL["function"],
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 24}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    reply = stack.client().chat.completions.create(
        model=CHAT, messages=WEATHER, tools=[strict], tool_choice="required", max_tokens=120, temperature=0
    )
    calls = reply.choices[0].message.tool_calls
    assert calls
    for call in calls:
        arguments = json.loads(call.function.arguments)
        assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
