"""Every model-family twin served for real: Ray Serve, vLLM CPU, ingress and governance.

A random-weight model says nothing useful, so the parser tests force its output with
structured outputs (a regex in the family's own reasoning or tool-call syntax) and assert
exactly how vLLM's parser for the family splits it, streamed and not. The garbage tests let
each twin say whatever it likes and assert the stream still ends properly.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from harness import twins
from tests.e2e.conftest import Stack
from tests.e2e.twins.conftest import UNSERVABLE

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def families(subset: list[str] | None = None, known: dict[str, str] | None = None) -> list[Any]:
    known = {**UNSERVABLE, **(known or {})}
    return [
        pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=known[f])) if f in known else f
        for f in (subset or list(twins.TWINS))
    ]


# Known vLLM 0.32 behaviour, seen through the whole stack (strict: a fix turns them into failures).
QWEN3_NO_SPLIT = (
    "qwen3 parser: with the non-thinking prompt (the only way the grammar holds from the first token, "
    "enable_in_reasoning not settable via engine_args) the forced '<think>abcdefgh</think>ijklmnop' is all content"
)
DEEPSEEK_STREAM_NO_SPLIT = (
    "deepseek_r1 streamed after a prompt ending in </think>: reasoning '' and the whole "
    "'<think>abcdefgh</think>ijklmnop' as content, while the non-streamed answer splits it"
)
DEEPSEEK_STREAM_NO_TOOLS = (
    "deepseek_v3 tool parser streamed (after deepseek_r1 reasoning): no tool_calls deltas, "
    "while the non-streamed answer parses the call"
)


def model(family: str) -> str:
    return twins.TWINS[family].model_id


def reasoning_of(message: Any) -> str | None:
    extra = message.model_extra or {}
    return extra.get("reasoning") or extra.get("reasoning_content")


def collect_stream(stack: Stack, body: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]], list[str]]:
    """Stream ``body`` (raw SSE); return (reasoning, content, tool-call deltas, data lines)."""
    reasoning, content, tool_deltas, lines = "", "", [], []
    with (
        stack.http(timeout=httpx.Timeout(120, connect=10)) as http,
        http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            lines.append(data)
            if data == "[DONE]":
                break
            event = json.loads(data)
            assert "error" not in event, event
            for choice in event.get("choices", []):
                delta = choice.get("delta") or {}
                reasoning += delta.get("reasoning") or delta.get("reasoning_content") or ""
                content += delta.get("content") or ""
                tool_deltas.extend(delta.get("tool_calls") or [])
    return reasoning, content, tool_deltas, lines


def streamed_tool_calls(deltas: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        call = calls.setdefault(d.get("index", 0), {"name": "", "arguments": ""})
        function = d.get("function") or {}
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""
    return [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]


# --------------------------------------------------------------------------- every twin


@pytest.mark.parametrize("family", families())
def test_chat(twin_stack: Stack, family: str) -> None:
    response = twin_stack.client().chat.completions.create(
        model=model(family), messages=HELLO, max_tokens=8, temperature=0
    )
    assert response.model == model(family)
    assert response.choices[0].finish_reason in ("length", "stop")
    assert response.usage is not None and 1 <= response.usage.completion_tokens <= 8


@pytest.mark.parametrize("family", families())
def test_streamed_chat(twin_stack: Stack, family: str) -> None:
    stream = twin_stack.client().chat.completions.create(
        model=model(family),
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert any(c.choices and c.choices[0].finish_reason in ("length", "stop") for c in chunks)
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 8


@pytest.mark.parametrize("family", families())
@pytest.mark.parametrize("seed", [1, 2])
def test_garbage_never_breaks_a_stream(twin_stack: Stack, family: str, seed: int) -> None:
    """Unforced random output, with tools offered so the tool parser runs too: the stream still ends."""
    body: dict[str, Any] = {
        "model": model(family),
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_tokens": 48,
        "temperature": 1.0,
        "seed": seed,
        "tools": [WEATHER_TOOL],
    }
    lines: list[str] = []
    with (
        twin_stack.http(timeout=httpx.Timeout(120, connect=10)) as http,
        http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200, response.read()
        lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert lines, "empty stream"
    last = lines[-1]
    assert last == "[DONE]" or "error" in json.loads(last), f"stream ended with {last!r}"
    for data in lines[:-1]:
        json.loads(data)  # every event is whole JSON


# --------------------------------------------------------------------------- forced reasoning

# Each family's reasoning syntax, forced. The grammar must hold from the first token: vLLM
# only constrains after reasoning ends unless the prompt already ended it, so the request
# asks the chat template for its non-thinking prompt (ending in </think>).
REASONING = {
    "qwen3-moe": {"enable_thinking": False},
    "deepseek-v3": {"thinking": False},
}
THOUGHT, ANSWER = "abcdefgh", "ijklmnop"


def reasoning_body(family: str) -> dict[str, Any]:
    return {
        "model": model(family),
        "messages": HELLO,
        "max_tokens": 40,
        "temperature": 0,
        "chat_template_kwargs": REASONING[family],
        "structured_outputs": {"regex": f"<think>{THOUGHT}</think>{ANSWER}"},
    }


@pytest.mark.parametrize("family", families(list(REASONING), {"qwen3-moe": QWEN3_NO_SPLIT}))
def test_forced_reasoning_is_split(twin_stack: Stack, family: str) -> None:
    body = reasoning_body(family)
    extra = {k: v for k, v in body.items() if k not in ("model", "messages", "max_tokens", "temperature")}
    response = twin_stack.client().chat.completions.create(
        model=body["model"], messages=body["messages"], max_tokens=40, temperature=0, extra_body=extra
    )
    message = response.choices[0].message
    assert (reasoning_of(message), message.content) == (THOUGHT, ANSWER)


@pytest.mark.parametrize(
    "family", families(list(REASONING), {"qwen3-moe": QWEN3_NO_SPLIT, "deepseek-v3": DEEPSEEK_STREAM_NO_SPLIT})
)
def test_forced_reasoning_is_split_streamed(twin_stack: Stack, family: str) -> None:
    reasoning, content, _, lines = collect_stream(twin_stack, reasoning_body(family))
    assert lines[-1] == "[DONE]"
    assert (reasoning.strip(), content.strip()) == (THOUGHT, ANSWER)


# --------------------------------------------------------------------------- forced tool calls

# Each family's tool-call syntax as its vLLM parser reads it (regex-escaped), forced.
TOOL_CALLS = {
    "qwen3-moe": (
        {"enable_thinking": False},
        r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "paris"\}\}\n</tool_call>',
    ),
    "deepseek-v3": (
        {"thinking": False},
        "<think>ok</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        r'```json\n\{"city": "paris"\}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    ),
    "llama4": ({}, r'\[get_weather\(city="paris"\)\]'),
}


def tool_body(family: str) -> dict[str, Any]:
    kwargs, regex = TOOL_CALLS[family]
    body: dict[str, Any] = {
        "model": model(family),
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_tokens": 80,
        "temperature": 0,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "structured_outputs": {"regex": regex},
    }
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    return body


@pytest.mark.parametrize("family", families(list(TOOL_CALLS)))
def test_forced_tool_call_is_parsed(twin_stack: Stack, family: str) -> None:
    with twin_stack.http(timeout=120) as http:
        response = http.post("/v1/chat/completions", json=tool_body(family))
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"]["tool_calls"]]
    assert calls == [("get_weather", {"city": "paris"})]
    assert choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("family", families(list(TOOL_CALLS), {"deepseek-v3": DEEPSEEK_STREAM_NO_TOOLS}))
def test_forced_tool_call_is_parsed_streamed(twin_stack: Stack, family: str) -> None:
    _, _, deltas, lines = collect_stream(twin_stack, tool_body(family))
    assert lines[-1] == "[DONE]"
    assert streamed_tool_calls(deltas) == [("get_weather", {"city": "paris"})]
