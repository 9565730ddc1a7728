"""The ingress against real HTTP servers on loopback (a stand-in replica, no engine)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aiohttp import web

from harness.ports import free_port
from harness.standins import serve, serve_handler
from service.api.ingress import IngressApp
from service.api.upstream import INTERNAL_TOKEN_HEADER, Endpoint, Upstream
from service.config.loader import parse_config

TOKEN = "internal-secret"
CONFIG = parse_config(
    {
        "ingress": {"max_body_bytes": 4096},
        "models": [
            {"id": "chat", "aliases": ["c"], "source": {"path": "/m"}, "kv_cache_memory": "1GiB"},
            {"id": "emb", "source": {"path": "/e"}, "task": "embed"},
            {
                "id": "cold",
                "source": {"path": "/c"},
                "kv_cache_memory": "1GiB",
                "autoscaling": {"min_replicas": 0},
            },
        ],
    },
    "test",
)


class StaticDirectory:
    def __init__(self, table: dict[str, list[Endpoint]]) -> None:
        self.table = table
        self.ready = True
        self.unreachable: list[str] = []
        self.woken: list[str] = []

    def endpoints(self, model_id: str) -> Sequence[Endpoint]:
        return self.table.get(model_id, [])

    async def wake(self, model_id: str, timeout_s: float) -> Sequence[Endpoint]:
        self.woken.append(model_id)
        return self.table.get(model_id, [])

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None:
        self.unreachable.append(endpoint.replica_id)
        self.table[model_id] = [e for e in self.table[model_id] if e is not endpoint]


class StandInReplica:
    """Answers like a replica: JSON, SSE streams, errors; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []
        self.stream_cancelled = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(
            {"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        )
        if request.headers.get(INTERNAL_TOKEN_HEADER) != TOKEN:
            return web.json_response({"error": {"message": "no"}}, status=401)
        if body.get("fail") == "plain":
            return web.Response(status=502, text="Bad Gateway", content_type="text/plain")
        if body.get("stream"):
            return await self._stream(request, body)
        return web.json_response({"id": "x", "model": body["model"]}, headers={"x-request-id": "replica"})

    async def _stream(self, request: web.Request, body: dict[str, object]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(int(body.get("chunks", 3))):
                await response.write(f"data: {json.dumps({'i': i})}\n\n".encode())
                await asyncio.sleep(float(body.get("delay", 0)))
            if body.get("fail") == "midstream":
                request.transport.close()  # the replica dies mid-stream
                return response
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.stream_cancelled.set()
            raise
        return response


@pytest.fixture
async def stack() -> AsyncIterator[tuple[str, StandInReplica, StaticDirectory]]:
    replica = StandInReplica()
    upstream = await serve_handler(replica.handle, handler_cancellation=True)
    dead = Endpoint(url=f"http://127.0.0.1:{free_port()}", replica_id="dead")
    live = Endpoint(url=upstream.url, replica_id="live")
    directory = StaticDirectory({"chat": [dead, live], "emb": [live]})
    served = await serve(IngressApp(CONFIG, directory, Upstream(TOKEN)))  # the production runner (service.serve.http)
    yield served.url, replica, directory
    await served.stop()
    await upstream.stop()


async def call(base: str, path: str, body: object = None, raw: bytes | None = None, **kw: object):
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(body).encode()
        method = "GET" if body is None and raw is None else "POST"
        async with session.request(method, base + path, data=data if method == "POST" else None, **kw) as r:
            return r.status, r.headers, await r.read()


def error_of(status: int, headers: object, body: bytes) -> dict[str, object]:
    assert headers["content-type"].startswith("application/json")  # type: ignore[index]
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    return json.loads(body)["error"]


async def test_routes_by_model_field_and_alias_with_one_request_id(stack) -> None:
    base, replica, directory = stack
    status, headers, body = await call(base, "/v1/chat/completions", {"model": "c"}, headers={"x-request-id": "abc"})
    assert status == 200 and json.loads(body)["model"] == "c"
    assert headers.getall("x-request-id") == ["abc"]
    assert replica.seen[-1]["headers"]["x-request-id"] == "abc"
    assert directory.unreachable in ([], ["dead"])  # the dead replica, if picked, was skipped
    status, headers, _ = await call(base, "/v1/embeddings", {"model": "emb", "input": "x"})
    assert status == 200 and len(headers.getall("x-request-id")) == 1


async def test_unknown_model_is_404_without_listing_models(stack) -> None:
    base, _, _ = stack
    status, headers, body = await call(base, "/v1/chat/completions", {"model": "nope"})
    error = error_of(status, headers, body)
    assert status == 404 and error["code"] == "model_not_found"
    assert "chat" not in error["message"] and "emb" not in error["message"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [(b"{not json", None), (b"[1]", None), (b'{"model": 3}', "model"), (b"{}", "model")],
)
async def test_malformed_requests_are_400(stack, raw: bytes, param: str | None) -> None:
    base, _, _ = stack
    status, headers, body = await call(base, "/v1/chat/completions", raw=raw)
    error = error_of(status, headers, body)
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param


async def test_wrong_task_body_limit_route_and_method(stack) -> None:
    base, _, _ = stack
    status, h, body = await call(base, "/v1/embeddings", {"model": "chat"})
    assert status == 400 and error_of(status, h, body)["code"] == "model_not_supported"
    status, h, body = await call(base, "/v1/chat/completions", raw=b'{"model":"chat","x":"' + b"a" * 5000 + b'"}')
    assert status == 413 and error_of(status, h, body)["code"] == "payload_too_large"
    status, h, body = await call(base, "/v2/nothing")
    assert status == 404 and error_of(status, h, body)["code"] == "not_found"
    status, h, body = await call(base, "/v1/chat/completions")
    assert status == 405 and error_of(status, h, body)["code"] == "method_not_allowed"


async def test_proxy_error_pages_become_openai_errors(stack) -> None:
    base, _, _ = stack
    status, headers, body = await call(base, "/v1/embeddings", {"model": "emb", "fail": "plain"})
    error = error_of(status, headers, body)
    assert status == 502 and error["type"] == "server_error" and error["message"] == "Bad Gateway"


async def test_cold_model_wakes_then_503_when_nothing_comes(stack) -> None:
    base, _, directory = stack
    status, headers, body = await call(base, "/v1/chat/completions", {"model": "cold"})
    assert status == 503 and error_of(status, headers, body)["code"] == "service_unavailable"
    assert directory.woken == ["cold"]


async def test_stream_is_relayed_and_failure_ends_in_band(stack) -> None:
    base, _, _ = stack
    status, headers, body = await call(base, "/v1/embeddings", {"model": "emb", "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: {") == 3
    status, _, body = await call(base, "/v1/embeddings", {"model": "emb", "stream": True, "fail": "midstream"})
    events = [e for e in body.split(b"\n\n") if e]
    assert status == 200 and events[-1] == b"data: [DONE]"
    assert json.loads(events[-2].removeprefix(b"data: "))["error"]["type"] == "server_error"


async def test_client_disconnect_cancels_upstream(stack) -> None:
    base, replica, _ = stack
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            base + "/v1/embeddings", json={"model": "emb", "stream": True, "chunks": 1000, "delay": 0.01}
        )
        await response.content.readline()
        response.close()
    await asyncio.wait_for(replica.stream_cancelled.wait(), 5)


async def test_health_ready_and_models(stack) -> None:
    base, _, directory = stack
    assert (await call(base, "/health"))[0] == 200
    assert (await call(base, "/ready"))[0] == 200
    status, headers, body = await call(base, "/-/healthz")  # as Ray Serve's proxy answers KubeRay
    assert (status, body, headers["content-type"]) == (200, b"success", "text/plain; charset=utf-8")
    directory.ready = False
    status, headers, body = await call(base, "/ready")
    assert status == 503 and error_of(status, headers, body)["code"] == "service_unavailable"
    assert (await call(base, "/-/healthz"))[0] == 503
    status, _, body = await call(base, "/v1/models")
    states = {m["id"]: m["status"]["state"] for m in json.loads(body)["data"]}
    assert states == {"chat": "ready", "emb": "ready", "cold": "scaled_to_zero"}
    status, _, body = await call(base, "/v1/models/c")
    assert status == 200 and json.loads(body)["id"] == "chat"


async def test_ready_waits_for_every_model_that_keeps_a_replica(stack) -> None:
    """/ready: a serving replica of each model with min_replicas >= 1 (the scale-to-zero "cold" is excepted);
    /-/healthz answers for the proxy alone, as Ray Serve's does."""
    base, _, directory = stack
    assert directory.table.get("cold", []) == [] and (await call(base, "/ready"))[0] == 200
    chat = directory.table.pop("chat")
    status, headers, body = await call(base, "/ready")
    error = error_of(status, headers, body)
    assert status == 503 and error["code"] == "service_unavailable"
    assert "no replica serves chat yet" in error["message"] and "emb" not in error["message"]
    assert (await call(base, "/-/healthz"))[0] == 200
    directory.table["chat"] = chat
    assert (await call(base, "/ready"))[0] == 200
