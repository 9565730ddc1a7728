"""A replica's HTTP server around an engine (the fake one: no model is loaded here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from service.api.replica import ReplicaApp
from service.api.upstream import INTERNAL_TOKEN_HEADER
from service.engine.fake import FakeEngine
from service.serve import http

TOKEN = {INTERNAL_TOKEN_HEADER: "t0ken"}


@pytest.fixture
async def replica() -> AsyncIterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(words=tuple(f"w{i}" for i in range(50)), delay_s=0.02)
    app = ReplicaApp(engine, "t0ken", max_ongoing=2, max_body_bytes=1024)
    sock = http.bind("127.0.0.1", 0)
    server, task = await http.start(app, sock)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    await http.stop(server, task)


async def post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object] | bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=TOKEN if headers is None else headers) as response:
            raw = await response.read()
            is_json = response.headers["content-type"].startswith("application/json")
            return response.status, json.loads(raw) if is_json else raw


async def test_only_the_ingress_may_call(replica) -> None:
    url, engine = replica
    status, body = await post(url + "/v1/chat/completions", {"model": "fake"}, headers={})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _ = await post(url + "/v1/chat/completions", {"model": "fake"}, headers={INTERNAL_TOKEN_HEADER: "wrong"})
    assert status == 401 and engine.calls == []


async def test_json_stream_and_engine_errors(replica) -> None:
    url, engine = replica
    engine.delay_s = 0
    status, body = await post(url + "/v1/chat/completions", {"model": "fake"})
    assert status == 200 and body["text"].startswith("w0 w1")
    status, raw = await post(url + "/v1/chat/completions", {"model": "fake", "stream": True})
    assert status == 200 and raw.count(b"data: {") == 50 and raw.endswith(b"data: [DONE]\n\n")
    status, body = await post(url + "/v1/chat/completions", {"model": "other"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = await post(url + "/v1/nope", {"model": "fake"})
    assert status == 404


async def test_concurrency_limit_is_503(replica) -> None:
    url, _ = replica
    results = await asyncio.gather(*[post(url + "/v1/completions", {"model": "fake"}) for _ in range(4)])
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 503, 503]
    overloaded = next(body for status, body in results if status == 503)
    assert overloaded["error"]["code"] == "overloaded"


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_engine_call(replica, stream: bool) -> None:
    url, engine = replica
    async with aiohttp.ClientSession() as session:

        async def call() -> None:
            async with session.post(
                url + "/v1/chat/completions", json={"model": "fake", "stream": stream}, headers=TOKEN
            ) as response:
                await response.content.readline()
                await asyncio.sleep(10)

        task = asyncio.create_task(call())
        await asyncio.sleep(0.3)
        assert engine.unfinished == 1
        task.cancel()  # the client goes away: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for _ in range(100):
        if engine.unfinished == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.unfinished == 0 and engine.cancelled == 1


async def test_health_reports_engine_state(replica) -> None:
    url, engine = replica
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/internal/health", headers=TOKEN) as response:
            assert response.status == 200 and (await response.json())["engine"]["running"] is True
        engine.dead = True
        async with session.get(url + "/internal/health", headers=TOKEN) as response:
            assert response.status == 503
