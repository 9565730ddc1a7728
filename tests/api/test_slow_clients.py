"""200 slow or stalled connections held open while ordinary clients keep being answered at their usual speed.

Against the real front door: a governed Paddock ingress (real Governor, node-local store, audit log) served by
the production runner (``service.serve.http``: uvicorn + httptools behind ``service.serve.door``) on a loopback
socket, forwarding over HTTP to a replica's own server. The engine behind that replica is the fake one (a
stand-in for vLLM, which would only add its own, unrelated, latency): the claim is about the front door.

The hostile connections come from a process of their own (``hostile_clients.py``), all at once: silent ones,
headers dripped a byte at a time, bodies stalled after their first bytes, bodies dripped, and streams whose
client never reads (4 MiB each: the relay is held by back-pressure). They are held for the whole measurement:
the door's time limits are set longer than the test, and the test checks that all 200 are still open at the end.
Ordinary requests meanwhile must keep a median latency within 2x of the median measured before the attack.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.config.settings import DoorLimits
from service.engine.base import CallContext, Result, StreamResult
from service.engine.fake import FakeEngine
from service.protocol.routes import Operation
from tests.api.front_door import CHAT, Stack, credentials, start_stack

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
HELD = DoorLimits(header_timeout_s=120.0, body_timeout_s=120.0)  # longer than the test: nothing is let go early
SAMPLES = 100
KINDS = {"silent": 45, "header_drip": 45, "body_stall": 45, "body_drip": 45, "slow_reader": 20}


class BigStreams(FakeEngine):
    """Streams are 4 MiB (64 events of 64 KiB): more than the socket buffers hold for a client that never reads."""

    async def call(self, operation: Operation, body: dict[str, object], ctx: CallContext) -> Result:
        if body.get("stream"):
            return StreamResult(self._big())
        return await super().call(operation, body, ctx)

    async def _big(self) -> AsyncIterator[bytes]:
        event = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "x" * 65536}}]}).encode()
        for _ in range(64):
            yield event + b"\n\n"
        yield b"data: [DONE]\n\n"


async def median_latency(stack: Stack, n: int) -> float:
    """The median latency of ``n`` ordinary chat requests, one after another on one keep-alive connection."""
    url, headers = f"http://127.0.0.1:{stack.api}/v1/chat/completions", credentials(stack, "api")
    seen = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(n):
            started = time.perf_counter()
            async with session.post(url, json=CHAT, headers=headers) as response:
                await response.read()
                assert response.status == 200
            seen.append(time.perf_counter() - started)
    return statistics.median(seen)


async def test_200_slow_clients_do_not_slow_ordinary_ones(tmp_path: Path) -> None:
    assert sum(KINDS.values()) == 200
    stack = await start_stack(tmp_path, HELD, engine=BigStreams(model_id="chat"))
    hostile = None
    try:
        await median_latency(stack, 20)  # warm up
        before = await median_latency(stack, SAMPLES)
        specs = [f"{kind}={count}" for kind, count in KINDS.items()]
        hostile = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.api.hostile_clients", str(stack.api), stack.key, *specs,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert hostile.stdout is not None and hostile.stdin is not None
        async with asyncio.timeout(20):
            assert await hostile.stdout.readline() == b"ready\n"
        await asyncio.sleep(1.0)  # the slow readers' streams fill their sockets, then wait
        assert stack.open_connections("api") >= 200
        during = await median_latency(stack, SAMPLES)
        assert stack.open_connections("api") >= 200  # all still held: none was let go during the measurement
        assert len(stack.governor.active) == KINDS["slow_reader"]  # their streams, still held by back-pressure
        assert hostile.returncode is None
        hostile.stdin.close()
        async with asyncio.timeout(10):
            assert await hostile.wait() == 0
        await asyncio.sleep(0.2)
        assert stack.open_connections("api") == 0  # every one of them let go when its client left
        assert not stack.governor.active
        completed = stack.records(phase="completed")
        assert sum(r["stream"] for r in completed) == KINDS["slow_reader"]  # each held stream settled, on record
        assert sum(not r["stream"] and r["outcome"] == "ok" for r in completed) == 20 + 2 * SAMPLES
        gone = stack.records(phase="refused", reason="client_disconnected")  # the stalled bodies, left mid-body
        assert len(gone) == KINDS["body_stall"] + KINDS["body_drip"]
        after = await median_latency(stack, SAMPLES)
        unloaded = max(before, after)  # unloaded latency, on both sides of the attack
        assert during <= 2 * unloaded, (
            f"median latency {during * 1e3:.2f} ms under load, {unloaded * 1e3:.2f} ms without"
        )
    finally:
        if hostile is not None and hostile.returncode is None:
            hostile.kill()
            await hostile.wait()
        await stack.stop()
