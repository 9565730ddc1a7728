"""Requests a replica serves to itself before it announces itself.

vLLM builds some paths on their first use: the sampler's logprobs path, the
structured-output grammar compiler, the chat template's first render, the tool
parser. Without a warm-up the first user on each pays for it (a request with
``logprobs`` took 19.7 s, the next 0.5 s). Each request here goes through the
same serving layer as a user's, with one output token or a few.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from service.config.schema import ModelConfig
from service.engine.base import CallContext, Result, StreamResult
from service.protocol.routes import Operation

log = logging.getLogger(__name__)

Call = Callable[[Operation, dict[str, object], CallContext], Awaitable[Result]]

_HELLO = [{"role": "user", "content": "Hello."}]
_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
_TOOL = {  # strict, with one possible argument: the structural tag forces a short, complete call
    "type": "function",
    "function": {
        "name": "paddock_warmup",
        "description": "A function the warm-up asks for.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"value": {"type": "string", "enum": ["ok"]}},
            "required": ["value"],
            "additionalProperties": False,
        },
    },
}


def warmup_requests(model: ModelConfig) -> list[tuple[str, Operation, dict[str, object]]]:
    """The (name, operation, body) of each path this model's replica warms."""
    if model.task == "embed":
        return [("embedding", "embeddings", {"model": model.id, "input": "Hello."})]
    chat: dict[str, object] = {"model": model.id, "messages": _HELLO, "max_tokens": 1}
    requests: list[tuple[str, Operation, dict[str, object]]] = [
        ("chat", "chat", chat),
        ("chat stream", "chat", {**chat, "stream": True, "stream_options": {"include_usage": True}}),
        ("chat logprobs", "chat", {**chat, "logprobs": True, "top_logprobs": 2}),
        ("completion logprobs", "completions", {"model": model.id, "prompt": "Hello", "max_tokens": 1, "logprobs": 2}),
        (
            "structured output",
            "chat",
            {
                **chat,
                "max_tokens": 4,
                "response_format": {"type": "json_schema", "json_schema": {"name": "warmup", "schema": _SCHEMA}},
            },
        ),
    ]
    if model.tool_call_parser is not None:
        requests.append(("tool call", "chat", {**chat, "max_tokens": 64, "tools": [_TOOL], "tool_choice": "required"}))
    return requests


async def warm_up(model: ModelConfig, call: Call) -> dict[str, float]:
    """Serve each warm-up request; return its seconds by name. A failing path is logged, not fatal.

    A path that fails here (a model without a chat template, say) fails for users too, with
    the same error; the replica still serves the paths that work.
    """
    timings: dict[str, float] = {}
    for name, operation, body in warmup_requests(model):
        started = time.perf_counter()
        try:
            result = await call(operation, body, CallContext(request_id=f"warmup-{len(timings)}"))
            if isinstance(result, StreamResult):
                async for _ in result.events:
                    pass
        except Exception as error:  # noqa: BLE001 - any failure is the path's, reported and skipped
            log.warning("model %s: warm-up of %s failed: %s", model.id, name, error)
            continue
        timings[name] = round(time.perf_counter() - started, 3)
    log.info("model %s warmed up: %s", model.id, ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return timings
