"""What prefix-aware routing adds to each request at the ingress: ``python -m bench.routing_cost``.

Times, with ``timeit`` over realistic parsed bodies, the key (``routing.prefix_key``) and the
choice (``pick_for_prefix``) against what ``least_loaded`` does (``pick``), for 2 and 8 replicas,
next to ``json.loads`` of the same body (what the ingress already pays to parse it). Each figure
is the median over ``--rounds`` interleaved rounds, with its range, in microseconds per request.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.api.routing import pick, pick_for_prefix, prefix_key
from service.api.upstream import Endpoint

_WORDS = "the a model cache replica token prefix request system user answer quickly policy data of to".split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def bodies(seed: int = 0) -> dict[str, tuple[str, dict[str, Any]]]:
    """Request bodies as the ingress has them after parsing, by name: (operation, body)."""
    rng = random.Random(seed)
    system = words(rng, 400)  # ~2.4k characters, ~500 tokens
    chat = {
        "model": "m",
        "stream": True,
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": words(rng, 40)},
            {"role": "assistant", "content": words(rng, 80)},
            {"role": "user", "content": words(rng, 30)},
        ],
    }
    agent = {  # a long agent transcript: 200 turns, ~100 kB
        "model": "m",
        "messages": [{"role": "system", "content": system}]
        + [{"role": ("user", "assistant")[i % 2], "content": words(rng, 80)} for i in range(200)],
    }
    parts = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": words(rng, 300)}, {"type": "image_url"}]},
        ],
    }
    return {
        "chat, 4 messages, 3 kB": ("chat", chat),
        "chat, 201 messages, 100 kB": ("chat", agent),
        "chat, content parts": ("chat", parts),
        "completions, 8 kB prompt": ("completions", {"model": "m", "prompt": words(rng, 1400)}),
        "responses, instructions + input": (
            "responses",
            {"model": "m", "instructions": system, "input": words(rng, 40)},
        ),
        "chat, short (no key)": ("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    }


def replicas(n: int) -> list[Endpoint]:
    return [Endpoint(f"http://10.0.0.{i}:9000", f"replica-{i:02d}-abcdef", inflight=i % 3) for i in range(n)]


def per_call_us(fn: Callable[[], object], number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


def measure(rounds: int, number: int) -> dict[str, dict[str, dict[str, float]]]:
    cases: dict[str, Callable[[], object]] = {}
    for name, (operation, body) in bodies().items():
        raw = json.dumps(body)
        cases[f"{name} | json.loads (already paid)"] = lambda raw=raw: json.loads(raw)
        cases[f"{name} | prefix_key"] = lambda op=operation, b=body: prefix_key(op, b)
    for n in (2, 8):
        endpoints = replicas(n)
        cases[f"{n} replicas | least_loaded: pick"] = lambda e=endpoints: pick(e)
        cases[f"{n} replicas | prefix: pick_for_prefix"] = lambda e=endpoints: pick_for_prefix(0x1234_5678_9ABC_DEF0, e)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):  # interleaved: every case once per round
        for name, fn in cases.items():
            samples[name].append(per_call_us(fn, number))
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name, values in samples.items():
        group, what = name.split(" | ")
        result.setdefault(group, {})[what] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.number)
    for group, figures in result.items():
        for what, s in figures.items():
            print(f"{group:<34} {what:<28} {s['median']:8.2f} µs ({s['min']:.2f}–{s['max']:.2f})")
    if args.out is not None:
        report = {"command": "python -m bench.routing_cost " + " ".join(argv or sys.argv[1:]), "us_per_call": result}
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
