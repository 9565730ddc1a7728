"""``python -m bench.governance``: the in-process governance decision, per request, in microseconds.

Per key count: a governance file, a real Governor from the service's own builder (policy file, state
store, hash-chained audit log, metrics) and one asyncio loop timing, per request, the decision (the
intake: ``authenticate`` + ``resolve`` + ``admit`` + the "admitted" audit record, everything the ingress
does before forwarding) and the settlement (``Ticket.close``: ``settle`` + the "completed" record). ``--redis``: the same against
a ``redis-server`` of its own on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.ports import free_port
from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.factory import build_governor
from service.governance.governor import Governor, effective
from service.governance.keys import hash_key, new_key
from service.governance.params import shape_request
from service.governance.store.base import Reservation, Usage
from service.observability.metrics import ServiceMetrics
from service.protocol.routes import CHAT

ROOT = Path(__file__).resolve().parents[1]
ROUTE = CHAT
MODEL = "chat"
WARMUP = 200
TARGET_US = 200.0
FLAT = 1.5
LIMITS = {  # realistic kinds, set high enough never to refuse
    "requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000, "max_concurrent_requests": 10_000,
    "tokens_per_day": 100_000_000_000, "tokens_per_month": 1_000_000_000_000,
}  # fmt: skip


def write_policy(path: Path, n_keys: int) -> list[str]:
    """A governance file with ``n_keys`` keys over max(1, n // 100) tenants; the keys, in order."""
    tenants = max(1, n_keys // 100)
    keys = [new_key() for _ in range(n_keys)]
    limits = "".join(f"      {name}: {value}\n" for name, value in LIMITS.items())
    lines = ["version: 1\ntenants:\n"]
    for t in range(tenants):
        lines.append(f'  - id: tenant-{t}\n    models: ["{MODEL}"]\n    limits:\n{limits}')
        lines.append("    parameters:\n      max_output_tokens: 512\n      request_timeout_s: 120\n    keys:\n")
        lines.extend(f'      - id: key-{k}\n        hash: "{hash_key(keys[k])}"\n' for k in range(t, n_keys, tenants))
    path.write_text("".join(lines))
    return keys


def governor_for_bench(workdir: Path, n_keys: int, store_url: str) -> tuple[Governor, list[str]]:
    """A Governor from the service's own builder (``service.governance.factory.build_governor``)."""
    model = {"id": MODEL, "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 2048}
    config = parse_config({"models": [model]}, "bench")
    keys = write_policy(workdir / "governance.yaml", n_keys)
    settings = Settings(
        state_dir=workdir / "state",
        governance_file=workdir / "governance.yaml",
        state_store=store_url,
        audit_dir=workdir / "audit",
        audit_stdout=False,
        admin_token="bench",
    )
    return build_governor(config, settings, ServiceMetrics()), keys


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return {"p50": cuts[49] / 1000, "p90": cuts[89] / 1000, "p99": cuts[98] / 1000}


def body(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Say hello, #{i}."}], "max_tokens": 64}


async def _timed_requests(governor: Governor, headers: list[str]) -> tuple[list[int], list[int]]:
    clock, usage, decisions, settles = time.perf_counter_ns, Usage(20, 64), [], []
    for i, authorization in enumerate(headers):
        request, rid = body(i), f"bench-{i}"  # parsed by the ingress before governance sees it
        start = clock()
        async with governor.intake(rid, ROUTE, "127.0.0.1") as intake:
            await intake.authenticate(authorization)
            ticket = await intake.admit(intake.resolve(MODEL), request)
        decided = clock()
        await asyncio.sleep(0)  # the forward: let the governor's watchers run, as they would
        settling = clock()
        ticket.tap.usage = usage  # as the usage tap reads it off the relayed response
        await ticket.close(200, response_started=True)
        decisions.append(decided - start)
        settles.append(clock() - settling)
    return decisions, settles


async def _run_case(
    workdir: Path, n_keys: int, requests: int, store_url: str, warmup: int, seed: int, pieces: bool
) -> dict[str, Any]:
    governor, keys = governor_for_bench(workdir, n_keys, store_url)
    rng = random.Random(seed)
    headers = [f"Bearer {rng.choice(keys)}" for _ in range(warmup + requests)]
    await governor.start()
    try:
        await _timed_requests(governor, headers[:warmup])
        decisions, settles = await _timed_requests(governor, headers[warmup:])
        parts = await _time_pieces(governor, headers[warmup:]) if pieces else None
    finally:
        await governor.stop()
    result = {"keys": n_keys, "tenants": max(1, n_keys // 100), "requests": len(decisions), "warmup": warmup}
    result |= {"decision_us": percentiles(decisions), "settle_us": percentiles(settles)}
    return result if parts is None else result | {"pieces_us": parts}


async def _time_pieces(governor: Governor, headers: list[str]) -> dict[str, dict[str, float]]:
    """Each part of the decision timed on its own (the work the decision does, in isolation)."""
    clock, usage = time.perf_counter_ns, Usage(20, 64)
    times: dict[str, list[int]] = {"authenticate": [], "shape_request": [], "store.admit": [], "audit write": []}
    for i, authorization in enumerate(headers):
        t0 = clock()
        principal = await governor.authenticate(authorization, "127.0.0.1")
        t1 = clock()
        model, (_, params, quotas) = governor.resolve(principal, MODEL), effective(principal)
        request = body(i)
        t2 = clock()
        shaped = shape_request(ROUTE, request, params, max_model_len=2048, cache_salt="0" * 32)
        t3 = clock()
        reservation = Reservation(
            f"p-{i}", principal.tenant.id, principal.key.id, model.id, shaped.reserve_tokens, quotas
        )
        t4 = clock()
        admission = await governor.store.admit(reservation, 30.0)
        t5 = clock()
        await governor.store.settle(reservation, admission.lease_id, usage)
        ticket = await governor.admit(principal, model, ROUTE, body(i), f"q-{i}", "127.0.0.1")
        t6 = clock()
        governor.trail.admitted(ticket)
        t7 = clock()
        await governor.settle(ticket, usage)
        governor.trail.completed(ticket, status=200, usage=usage, outcome="ok")
        await asyncio.sleep(0)
        for name, spent in zip(times, (t1 - t0, t3 - t2, t5 - t4, t7 - t6), strict=True):
            times[name].append(spent)
    return {name: percentiles(samples) for name, samples in times.items()}


def measure(
    n_keys: int, requests: int, store_url: str = "local", *, warmup: int = WARMUP, seed: int = 0, pieces: bool = False
) -> dict[str, Any]:
    """One backend and key count, in a fresh temporary directory and its own asyncio loop."""
    with tempfile.TemporaryDirectory(prefix="paddock-govbench-") as directory:
        return asyncio.run(_run_case(Path(directory), n_keys, requests, store_url, warmup, seed, pieces))


def redis_available() -> bool:
    try:
        import service.governance.store.redis  # noqa: F401
    except ImportError:
        return False
    return shutil.which("redis-server") is not None


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` of our own on a free loopback port (no persistence); always stopped."""
    with tempfile.TemporaryDirectory(prefix="paddock-govbench-redis-") as directory:
        port = free_port()
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", directory]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _pong(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start (exit code {process.poll()})")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    local = sorted((r for r in results if r["backend"] == "local"), key=lambda r: r["keys"])
    worst = max(r["decision_us"]["p50"] for r in local)
    ratio = local[-1]["decision_us"]["p50"] / local[0]["decision_us"]["p50"]
    met = worst <= TARGET_US and ratio <= FLAT
    low, high = f"{local[0]['keys']:,}", f"{local[-1]['keys']:,}"
    text = (
        f"verdict: {'MET' if met else 'NOT MET'} — target: decision p50 ≤ {TARGET_US:.0f} µs with the node-local "
        f"store, flat from {low} to {high} keys (≤ {FLAT}×); measured: worst p50 {worst:.1f} µs, "
        f"p50 at {high} keys = {ratio:.2f}× p50 at {low}"
    )
    return {"met": met, "worst_p50_us": worst, "flatness": ratio, "text": text}


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| backend | keys | decision p50 µs | decision p90 µs | decision p99 µs | settle p50 µs |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for r in results:
        d, settle = r["decision_us"], r["settle_us"]["p50"]
        lines.append(
            f"| {r['backend']} | {r['keys']:,} | {d['p50']:.1f} | {d['p90']:.1f} | {d['p99']:.1f} | {settle:.1f} |"
        )
    for r in (r for r in results if "pieces_us" in r):
        lines += ["", f"Where the time goes ({r['backend']}, {r['keys']:,} keys; each piece timed alone):", ""]
        lines += ["| piece | p50 µs | p90 µs | p99 µs | share of decision p50 |", "|---|---:|---:|---:|---:|"]
        total = r["decision_us"]["p50"]
        for name, p in r["pieces_us"].items():
            lines.append(f"| {name} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | {p['p50'] / total:.0%} |")
        parts, d = sum(p["p50"] for p in r["pieces_us"].values()), r["decision_us"]
        lines.append(f"| sum of the four pieces | {parts:.1f} | | | {parts / total:.0%} |")
        whole = "whole decision (the rest: resolve, policy, salt, ticket, metrics)"
        lines.append(f"| {whole} | {total:.1f} | {d['p90']:.1f} | {d['p99']:.1f} | 100% |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", default="10,1000,100000", help="comma-separated key counts")
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per case (after the warm-up)")
    redis = "also run against a redis-server of our own (default: if redis-server and redis-py are installed)"
    parser.add_argument("--redis", action=argparse.BooleanOptionalAction, default=None, help=redis)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "governance.json")
    args = parser.parse_args(argv)
    args.keys = sorted({int(k) for k in args.keys.split(",")})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_redis = redis_available() if args.redis is None else args.redis
    largest, results = args.keys[-1], []
    for n in args.keys:
        print(f"local: {n:,} keys…", file=sys.stderr, flush=True)
        results.append({"backend": "local", **measure(n, args.requests, "local", pieces=n == largest)})
    if use_redis:
        with redis_server() as url:
            for n in args.keys:
                print(f"redis: {n:,} keys…", file=sys.stderr, flush=True)
                store_url = f"{url}?paddock_prefix=bench{n}:"
                results.append({"backend": "redis", **measure(n, args.requests, store_url, pieces=n == largest)})
    outcome = verdict(results)
    print(report(results) + "\n\n" + outcome["text"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    command = "python -m bench.governance " + " ".join(argv if argv is not None else sys.argv[1:])
    document = {"command": command.strip(), "machine": machine, "results": results, "verdict": outcome}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
