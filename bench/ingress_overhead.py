"""``python -m bench.ingress_overhead``: what Paddock's ingress adds per request and per streamed chunk.

One process, one event loop: a stand-in replica that streams 64 vLLM-shaped SSE
chunks 1 ms apart, and the real ingress in front of it (ungoverned; governed, with
the real governor, store and audit log; governed with tracing on). Requests go
one at a time, interleaved across the variants, so drift on a busy machine hits
them alike. Reported: the median time to the first chunk and to the stream's last
event (``[DONE]``), and their difference from calling the replica directly. The engine is
not involved: this is the cost of our layer, not of vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.governance import governor_for_bench
from harness.standins import OneReplicaDirectory, serve, serve_handler
from service.api.ingress import IngressApp
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.observability.metrics import ServiceMetrics
from service.observability.tracing import Tracing

CHUNKS = 64
GAP_S = 0.001  # between chunks, so that each one travels on its own (a decode step is ~10-30 ms)
TOKEN = "bench-internal"


async def replica(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for i in range(CHUNKS):
        chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
        await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        await asyncio.sleep(GAP_S)
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 8, "completion_tokens": CHUNKS, "total_tokens": 8 + CHUNKS}
        await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[float, float]:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        first = done = 0.0
        async for chunk in response.content.iter_any():
            first = first or time.perf_counter() - started
            if b"[DONE]" in chunk:  # the last event: what follows (settlement, audit) is not the client's wait
                done = time.perf_counter() - started
    return first, done


async def run(requests: int, workdir: Path) -> dict[str, dict[str, float]]:
    upstream = await serve_handler(replica)
    endpoint = Endpoint(upstream.url, "r")
    governor, keys = governor_for_bench(workdir, 10, "local")
    await governor.start()
    config = parse_config({"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"}]}, "bench")
    tracing = Tracing(InMemorySpanExporter(), "bench")
    apps = {
        "ungoverned": IngressApp(config, OneReplicaDirectory(endpoint), Upstream(TOKEN), metrics=ServiceMetrics()),
        "governed": IngressApp(config, OneReplicaDirectory(endpoint), Upstream(TOKEN), governor, (), ServiceMetrics()),
        "governed+tracing": IngressApp(
            config, OneReplicaDirectory(endpoint), Upstream(TOKEN), governor, (), ServiceMetrics(), tracing
        ),
    }
    servers = {name: await serve(app) for name, app in apps.items()}
    urls = {"direct": f"{endpoint.url}/v1/chat/completions"}
    urls |= {name: served.url + "/v1/chat/completions" for name, served in servers.items()}
    auth = {"authorization": f"Bearer {keys[0]}"}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 50):
            for name, url in urls.items():
                sample = await one(session, url, auth if name.startswith("governed") else {})
                if i >= 50:  # warm-up
                    samples[name].append(sample)
    for served in servers.values():
        await served.stop()
    await governor.stop()
    await upstream.stop()
    tracing.shutdown()
    return {
        name: {
            "first_chunk_p50_us": statistics.median(s[0] for s in got) * 1e6,
            "stream_p50_us": statistics.median(s[1] for s in got) * 1e6,
        }
        for name, got in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pd-overhead-") as workdir:
        result = asyncio.run(run(args.requests, Path(workdir)))
    direct = result["direct"]
    print(f"{args.requests} sequential streams of {CHUNKS} chunks {GAP_S * 1000:g} ms apart; medians; one event loop")
    print("| path | first chunk µs | + vs direct | whole stream µs | + vs direct | + per chunk |")
    print("|---|---|---|---|---|---|")
    for name, r in result.items():
        extra_first = r["first_chunk_p50_us"] - direct["first_chunk_p50_us"]
        extra_stream = r["stream_p50_us"] - direct["stream_p50_us"]
        print(
            f"| {name} | {r['first_chunk_p50_us']:.0f} | {extra_first:+.0f} | {r['stream_p50_us']:.0f} "
            f"| {extra_stream:+.0f} | {extra_stream / CHUNKS:+.1f} |"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
