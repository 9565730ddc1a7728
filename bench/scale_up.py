"""How fast Paddock reacts to a load step: one replica to two, against the engine's own cold start.

``python -m bench.scale_up`` serves the tiny random Llama (bench/tiny_model.py) through ``paddock serve``,
governed, with ``min_replicas: 1``, ``max_replicas: 2``, ``target_ongoing_requests: 2`` and 1 s / 2 s
up/downscale delays. Each round, at one replica, ``--load`` clients start streaming short chats one after
another (the load step). Measured per round:

* step -> announced: until the new replica has announced itself to the registry (its log line);
* its own start: the replica's ``__init__`` (model files, vLLM engine, HTTP server), from that same line,
  which is the engine's cold start plus Paddock's few milliseconds around it;
* overhead: the difference, i.e. Ray's autoscaling decision and the new worker process;
* announced -> routed: until the new replica has a request in flight (its ``/internal/health``).

The issue's goal is reaction (step -> first request on the new replica) within the engine's own cold start
+ 5 s, so the figure to read is overhead + routed. Then the load stops and the round waits for the
scale-down to one replica. Printed and written: per-round figures and medians with their range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.servers import ROOT, Server, start_paddock

MODEL_ID = "tiny-llama-autoscaled"
INTERNAL_TOKEN = "bench-scale-up"
_READY = re.compile(rf"model {re.escape(MODEL_ID)} replica \S+ ready at (http://\S+) in ([0-9.]+)s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=int, default=6, help="concurrent streaming clients of the load step")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens of each load stream")
    parser.add_argument("--timeout", type=float, default=900, help="longest wait for a second replica (s)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results" / ("scale-up-" + time.strftime("%Y%m%d-%H%M%S"))
    )
    return parser.parse_args(argv)


def write_config(args: argparse.Namespace, tiny: Path) -> Path:
    model = {
        "id": MODEL_ID,
        "source": {"path": str(tiny)},
        "dtype": "float32",
        "max_model_len": 1024,
        "kv_cache_memory": "64MiB",
        "resources": {"cpus": 0.5},
        "approval": "off",  # generated here, from the embedded model
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 2,
        },
    }
    path = args.out / "paddock-scale-up.yaml"
    path.write_text(yaml.safe_dump({"models": [model], "ingress": {"cpus": 0.25}}, sort_keys=False))
    return path


def announced(server: Server) -> dict[str, float]:
    """Every replica that announced itself so far: URL -> its own start time (s), from the log."""
    text = server.log_path.read_text(errors="replace")
    return {m.group(1): float(m.group(2)) for m in _READY.finditer(text)}


def replicas(server: Server) -> int:
    request = urllib.request.Request(
        f"{server.base_url}/v1/models/{MODEL_ID}", headers={"authorization": f"Bearer {server.api_key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response)["status"]["replicas"])


def inflight(url: str) -> int:
    request = urllib.request.Request(url + "/internal/health", headers={"x-paddock-internal-token": INTERNAL_TOKEN})
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.load(response)["inflight"])


async def _client(server: Server, max_tokens: int, stop: asyncio.Event, failures: list[str]) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Hello! Who are you?"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {server.api_key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        while not stop.is_set():
            async with session.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers) as answer:
                text = await answer.text()
                if answer.status != 200 or not text.rstrip().endswith("data: [DONE]"):
                    failures.append(f"{answer.status}: {text[-200:]}")


async def _poll(condition: Any, timeout_s: float, what: str) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {what} within {timeout_s:.0f}s")


async def one_round(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    await _poll(lambda: replicas(server) == 1, 300, "scale-down to one replica")
    before = announced(server)
    stop, failures = asyncio.Event(), list[str]()
    step = time.monotonic()
    clients = [asyncio.create_task(_client(server, args.max_tokens, stop, failures)) for _ in range(args.load)]
    try:
        seen = await _poll(lambda: set(announced(server)) - set(before), args.timeout, "second replica")
        [new] = set(announced(server)) - set(before)
        routed = await _poll(lambda: inflight(new) > 0, 60, "request on the new replica")
    finally:
        stop.set()
        await asyncio.gather(*clients)
    own = announced(server)[new]
    result = {
        "step_to_announced_s": round(seen - step, 2),
        "own_start_s": own,
        "overhead_s": round(seen - step - own, 2),
        "announced_to_routed_s": round(routed - seen, 2),
        "reaction_beyond_cold_start_s": round(routed - step - own, 2),
        "failed_streams": len(failures),
        "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(result), flush=True)
    return result


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("step_to_announced_s", "own_start_s", "overhead_s", "announced_to_routed_s", "reaction_beyond_cold_start_s")
    return {
        key: {
            "median": statistics.median(r[key] for r in rounds),
            "min": min(r[key] for r in rounds),
            "max": max(r[key] for r in rounds),
        }
        for key in keys
    } | {"failed_streams": sum(r["failed_streams"] for r in rounds), "goal_s": 5.0}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from bench.tiny_model import prepared_tiny_llama

    tiny = prepared_tiny_llama(ROOT)
    started = time.monotonic()
    server = start_paddock(write_config(args, tiny), args.out, {"PADDOCK_INTERNAL_TOKEN": INTERNAL_TOKEN})
    try:
        rounds = [asyncio.run(one_round(args, server)) for _ in range(args.rounds)]
    finally:
        server.stop()
    summary = summarise(rounds)
    report = {
        "command": "python -m bench.scale_up " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "wall_s": round(time.monotonic() - started),
        "rounds": rounds,
        "summary": summary,
    }
    (args.out / "scale-up.json").write_text(json.dumps(report, indent=2))
    print(
        "scale-up reaction beyond the engine's cold start: median {median:.1f}s (range {min:.1f}-{max:.1f}s), "
        "goal 5 s".format(**summary["reaction_beyond_cold_start_s"])
    )
    print(f"failed streams: {summary['failed_streams']}; written: {args.out / 'scale-up.json'}")
    return 1 if summary["failed_streams"] else 0


if __name__ == "__main__":
    sys.exit(main())
