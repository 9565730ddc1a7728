"""``routing: prefix`` against ``routing: least_loaded``: vLLM's prefix-cache hit rate and TTFT.

``python -m bench.prefix_routing`` serves two replicas of the tiny random Llama (bench/tiny_model.py)
through ``paddock serve``, governed, once per routing mode per round; the order of the two modes
alternates between rounds. Each start runs ``--passes`` passes of the same kind of workload: ``--groups``
groups of ``--per-group`` streamed chat requests, each group sharing a long system prompt
(``--prefix-words`` random words, a few hundred tokens) and differing in its last (user) message,
sent in a shuffled order at ``--concurrency``. Every pass uses new prompts (seeded by round and
pass, the same for both modes), so a pass starts cold for its groups and the two modes see
the same requests.

Read per pass: vLLM's ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` (prompt tokens found
in / looked up in the prefix cache, summed over both replicas), from the Ray metrics agent where
Paddock's replicas export them (``ray_vllm_prefix_cache_*_total``), and the client's TTFT (time to
the first content delta). Printed and written: per-pass figures and medians with their range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.servers import ROOT, Server, start_paddock
from harness.ports import free_port

MODEL_ID = "tiny-llama"
MODES = ("prefix", "least_loaded")
_COUNTERS = ("ray_vllm_prefix_cache_hits_total", "ray_vllm_prefix_cache_queries_total")
_SUCCESS = "ray_vllm_request_success_total"
_WORDS = (
    "river stone cloud market window garden letter engine silver orange paper winter bridge candle forest "
    "pocket island mirror ladder basket thunder velvet harbor pepper lantern meadow copper violet anchor"
).split()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="starts per mode (order alternating)")
    parser.add_argument("--passes", type=int, default=3, help="workload passes per start, new prompts each")
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--per-group", type=int, default=6)
    parser.add_argument("--prefix-words", type=int, default=400, help="shared system prompt (~1.3 tokens a word)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--kv-cache", default="8MiB", help="per replica (8 MiB: 32 blocks of 128 tokens)")
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results" / ("prefix-" + time.strftime("%Y%m%d-%H%M%S"))
    )
    return parser.parse_args(argv)


def write_config(args: argparse.Namespace, mode: str, tiny: Path) -> Path:
    model = {
        "id": MODEL_ID,
        "source": {"path": str(tiny)},
        "dtype": "float32",
        "max_model_len": 1024,
        "kv_cache_memory": args.kv_cache,
        "resources": {"cpus": 1},
        "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        "approval": "off",  # generated here, from the embedded model
        "routing": mode,
    }
    path = args.out / f"paddock-{mode}.yaml"
    path.write_text(yaml.safe_dump({"models": [model]}, sort_keys=False))
    return path


def workload(args: argparse.Namespace, seed: int) -> list[list[dict[str, str]]]:
    """The pass's conversations, shuffled: ``groups`` shared system prompts, ``per_group`` last messages each."""
    rng = random.Random(seed)
    requests = []
    for g in range(args.groups):
        system = f"Group {seed}-{g}. " + " ".join(rng.choice(_WORDS) for _ in range(args.prefix_words))
        for i in range(args.per_group):
            question = f"Question {i}: " + " ".join(rng.choice(_WORDS) for _ in range(12))
            requests.append([{"role": "system", "content": system}, {"role": "user", "content": question}])
    rng.shuffle(requests)
    return requests


def scrape(url: str) -> dict[str, float]:
    """The prefix-cache counters (summed over replicas) and completed requests per replica."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {name: 0.0 for name in _COUNTERS}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if name in _COUNTERS:
            values[name] += float(line.rsplit(" ", 1)[1])
        elif name == _SUCCESS:
            replica = rest.split('ReplicaId="', 1)[1].split('"', 1)[0] if 'ReplicaId="' in rest else "?"
            values[f"success:{replica}"] = values.get(f"success:{replica}", 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def settled(url: str, quiet_s: float = 3.0, timeout_s: float = 60.0) -> dict[str, float]:
    """Scrape until the counters stop moving (the Ray metrics agent lags the engines by its report interval)."""
    last, since, deadline = scrape(url), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = scrape(url)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


async def one(session: aiohttp.ClientSession, server: Server, messages: list[dict[str, str]], max_tokens: int) -> float:
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    headers = {"authorization": f"Bearer {server.api_key}"}
    start = time.perf_counter()
    async with session.post(server.base_url + "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
        first = None
        async for line in response.content:
            if first is None and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start) * 1000


async def drive(server: Server, requests: list[list[dict[str, str]]], args: argparse.Namespace) -> list[float]:
    queue = list(reversed(requests))
    ttfts: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            ttfts.append(await one(session, server, queue.pop(), args.max_tokens))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
    return ttfts


def run_mode(args: argparse.Namespace, mode: str, round_: int, tiny: Path) -> list[dict[str, Any]]:
    metrics_port = free_port()
    env = {"PADDOCK_RAY_METRICS_PORT": str(metrics_port), "RAY_metrics_report_interval_ms": "1000"}
    started = time.monotonic()
    log_dir = args.out / f"r{round_}-{mode}"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = start_paddock(write_config(args, mode, tiny), log_dir, env)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    passes = []
    try:
        print(f"round {round_} {mode}: serving after {time.monotonic() - started:.0f} s", flush=True)
        warm = [[{"role": "user", "content": f"warm up {i}"}] for i in range(4)]
        asyncio.run(drive(server, warm, args))
        for p in range(args.passes):
            before = settled(url)
            ttfts = asyncio.run(drive(server, workload(args, args.seed + 100 * round_ + p), args))
            after = settled(url)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            hits, queries = delta[_COUNTERS[0]], delta[_COUNTERS[1]]
            per_replica = sorted(int(v) for k, v in delta.items() if k.startswith("success:"))
            entry = {
                "round": round_,
                "pass": p,
                "mode": mode,
                "hit_rate": hits / queries if queries else 0.0,
                "hits": hits,
                "queries": queries,
                "requests_per_replica": per_replica,
                "ttft_p50_ms": statistics.median(ttfts),
                "ttft_p90_ms": statistics.quantiles(ttfts, n=10)[-1],
            }
            passes.append(entry)
            print(
                f"  pass {p}: hit rate {entry['hit_rate']:.3f} ({hits:.0f}/{queries:.0f} tokens), "
                f"requests per replica {per_replica}, TTFT p50 {entry['ttft_p50_ms']:.1f} ms",
                flush=True,
            )
    finally:
        server.stop()
    return passes


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(passes: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [p for p in passes if p["mode"] == mode]
        summary[mode] = {
            metric: spread([p[metric] for p in mine]) for metric in ("hit_rate", "ttft_p50_ms", "ttft_p90_ms")
        }
    pairs = [
        (a, b)
        for a in passes
        for b in passes
        if a["mode"] == "prefix" and b["mode"] == "least_loaded" and (a["round"], a["pass"]) == (b["round"], b["pass"])
    ]
    summary["ttft_p50_ratio"] = spread([a["ttft_p50_ms"] / b["ttft_p50_ms"] for a, b in pairs])
    summary["hit_rate_delta"] = spread([a["hit_rate"] - b["hit_rate"] for a, b in pairs])
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from bench.tiny_model import prepared_tiny_llama

    tiny = prepared_tiny_llama(ROOT)
    started = time.monotonic()
    passes: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            passes += run_mode(args, mode, round_, tiny)
    summary = summarise(passes)
    report = {
        "command": "python -m bench.prefix_routing " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "wall_s": round(time.monotonic() - started),
        "workload": {k: getattr(args, k) for k in ("groups", "per_group", "prefix_words", "concurrency", "kv_cache")},
        "passes": passes,
        "summary": summary,
    }
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    for mode in MODES:
        s = summary[mode]
        print(
            f"{mode:<13} hit rate {s['hit_rate']['median']:.3f} ({s['hit_rate']['min']:.3f}–{s['hit_rate']['max']:.3f})"
            f"  TTFT p50 {s['ttft_p50_ms']['median']:.1f} ms ({s['ttft_p50_ms']['min']:.1f}–{s['ttft_p50_ms']['max']:.1f})"
        )
    r = summary["ttft_p50_ratio"]
    print(f"TTFT p50 prefix / least_loaded: {r['median']:.3f}× ({r['min']:.3f}–{r['max']:.3f})")
    print(f"results: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
