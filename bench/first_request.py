"""The first request on each sampling path, cold and after the replica's warm-up.

A path's first request pays for what vLLM builds lazily (a compiled sampler for
logprobs, a grammar compiler for structured outputs, the chat template's first
render). Each round starts the SmolLM2 engine in this process twice — warm-up
off, then on — and times, on each, the first and the second request of every
path. The second request is the warm figure the first should match. Figures
are medians over the rounds, with their range.

    python -m bench.first_request [--rounds 3] [--out first-request.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from service.config.loader import load_config
from service.config.settings import Settings
from service.engine.base import CallContext, StreamResult
from service.models.sources import resolve

MESSAGES = [{"role": "user", "content": "Name a colour."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PATHS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("chat", {"messages": MESSAGES, "max_tokens": 4}),
    "chat_stream": ("chat", {"messages": MESSAGES, "max_tokens": 4, "stream": True}),
    "chat_logprobs": ("chat", {"messages": MESSAGES, "max_tokens": 4, "logprobs": True, "top_logprobs": 3}),
    "chat_json_schema": (
        "chat",
        {
            "messages": MESSAGES,
            "max_tokens": 16,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "colour",
                    "schema": {"type": "object", "properties": {"c": {"type": "string"}}},
                },
            },
        },
    ),
    "chat_tool_required": (
        "chat",
        {"messages": MESSAGES, "max_tokens": 24, "tools": [WEATHER_TOOL], "tool_choice": "required"},
    ),
    "completion_logprobs": ("completions", {"prompt": "Red, green,", "max_tokens": 4, "logprobs": 2}),
}


async def _timed(engine: Any, operation: str, body: dict[str, Any], model: str) -> float:
    started = time.perf_counter()
    result = await engine.call(operation, {"model": model, **body}, CallContext(request_id=f"bench-{time.time_ns()}"))
    if isinstance(result, StreamResult):
        async for _ in result.events:
            pass
    return time.perf_counter() - started


async def measure(warmup: bool) -> dict[str, Any]:
    from service.engine.vllm_engine import VLLMEngine

    settings = Settings()
    model = load_config(None).models[0]
    engine = VLLMEngine(model, resolve(model, settings.cache_dir, lambda _: None), warmup=warmup)
    started = time.perf_counter()
    await engine.start()
    start_s = time.perf_counter() - started
    paths: dict[str, dict[str, float]] = {}
    try:
        for name, (operation, body) in PATHS.items():
            first = await _timed(engine, operation, body, model.id)
            second = await _timed(engine, operation, body, model.id)
            paths[name] = {"first_s": round(first, 3), "second_s": round(second, 3)}
    finally:
        await engine.shutdown()
    return {"warmup": warmup, "start_s": round(start_s, 1), "paths": paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/first-request.json"))
    args = parser.parse_args()
    runs = [asyncio.run(measure(warmup)) for _ in range(args.rounds) for warmup in (False, True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=2), encoding="utf-8")
    print(f"{args.rounds} rounds; median (min-max) seconds")
    print(f"{'path':22} {'no warm-up: first':>22} {'second':>20} {'warm-up: first':>20} {'second':>20}")
    for name in PATHS:
        cells = [_spread([r["paths"][name][k] for r in runs if r["warmup"] is w]) for w in (False, True) for k in KEYS]
        print(f"{name:22} {cells[0]:>22} {cells[1]:>20} {cells[2]:>20} {cells[3]:>20}")
    for warmup in (False, True):
        starts = [r["start_s"] for r in runs if r["warmup"] is warmup]
        print(f"engine start, warm-up {'on' if warmup else 'off'}: {_spread(starts)} s")


KEYS = ("first_s", "second_s")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
