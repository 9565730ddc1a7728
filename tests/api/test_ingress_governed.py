"""The ingress with governance on: a real Governor, node-local store and audit log, a stand-in replica."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from harness.ports import free_port
from harness.standins import OneReplicaDirectory, serve, serve_handler
from service.api.ingress import IngressApp
from service.api.metrics_app import MetricsApp
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.audit import verify
from service.governance.factory import build_governor
from service.governance.figures import refresh_tenant_gauges
from service.governance.keys import hash_key, new_key
from service.governance.store import open_store
from service.observability.metrics import ServiceMetrics

TOKEN = "internal"
CONFIG = parse_config(
    {"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 1000}]},
    "test",
)


class Replica:
    """Answers with usage like vLLM: in the body, or as the last stream event when asked."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        if not body.get("stream"):
            await asyncio.sleep(float(body.get("metadata", {}).get("delay", 0)))
            choice = {"index": 0, "message": {"role": "assistant", "content": "Paris"}}
            return web.json_response({"choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(int(body.get("metadata", {}).get("chunks", 3))):
            chunk = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(float(body.get("metadata", {}).get("delay", 0)))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def governed(tmp_path: Path):
    keys = {"a": new_key(), "b": new_key()}
    policy = {
        "tenants": [
            {
                "id": "acme",
                "models": ["*"],
                "limits": {"tokens_per_minute": 5000},
                "parameters": {"max_output_tokens": 50, "request_timeout_s": 1.0},
                "keys": [{"id": "ka", "hash": hash_key(keys["a"])}],
            },
            {"id": "other", "models": ["*"], "keys": [{"id": "kb", "hash": hash_key(keys["b"])}]},
        ]
    }
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(policy))
    replica = Replica()
    upstream = await serve_handler(replica.handle)
    metrics = ServiceMetrics()
    settings = Settings(state_dir=tmp_path, governance_file=path, audit_stdout=False, admin_token="t")
    governor = build_governor(CONFIG, settings, metrics, kill_poll_s=0.05, lease_ttl_s=3)
    await governor.start()
    app = IngressApp(
        CONFIG,
        OneReplicaDirectory(Endpoint(upstream.url, "r")),
        Upstream(TOKEN),
        governor,
        metrics=metrics,
    )
    served = await serve(app)
    yield served.url, keys, replica, governor, tmp_path
    await served.stop()
    await governor.stop()
    await upstream.stop()


async def post(base: str, key: str, body: dict[str, object]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        headers = {"authorization": f"Bearer {key}"}
        async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


async def test_usage_is_settled_from_bodies_and_streams(governed) -> None:
    base, keys, replica, governor, _ = governed
    status, _, body = await post(base, keys["a"], CHAT)
    assert status == 200 and json.loads(body)["usage"]["total_tokens"] == 10
    assert replica.bodies[-1]["max_completion_tokens"] == 50  # the cap, set when none was asked
    assert replica.bodies[-1]["cache_salt"]  # per-tenant prefix-cache isolation
    status, _, body = await post(base, keys["a"], {**CHAT, "stream": True})
    assert replica.bodies[-1]["stream_options"] == {"include_usage": True}
    assert status == 200 and b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")  # not asked for
    status, _, body = await post(base, keys["a"], {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert b'"usage"' in body
    rows = await governor.store.usage()
    assert [(r.tenant, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [("acme", 3, 21, 9)]


async def test_other_tenants_get_another_cache_salt(governed) -> None:
    base, keys, replica, _, _ = governed
    await post(base, keys["a"], CHAT)
    await post(base, keys["b"], CHAT)
    assert replica.bodies[0]["cache_salt"] != replica.bodies[1]["cache_salt"]


async def test_a_kill_ends_a_running_stream_in_band(governed) -> None:
    base, keys, _, governor, _ = governed
    slow = {**CHAT, "stream": True, "metadata": {"chunks": 200, "delay": 0.005}}
    call = asyncio.create_task(post(base, keys["b"], slow))
    await asyncio.sleep(0.2)
    await governor.store.kill("tenant:other", "test", "admin")
    status, _, body = await asyncio.wait_for(call, 2)
    events = [e for e in body.split(b"\n\n") if e]
    assert status == 200 and events[-1] == b"data: [DONE]"
    assert json.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == "disabled_by_operator"
    status, headers, _ = await post(base, keys["b"], CHAT)
    assert status == 503 and headers["x-should-retry"] == "false"
    assert not governor.active


async def test_a_kill_while_the_replica_has_not_answered_yet_is_a_503_on_record(governed) -> None:
    """The request waits for the replica's response head (e.g. a long prefill): a kill ends that wait too."""
    base, keys, _, governor, tmp_path = governed
    call = asyncio.create_task(post(base, keys["b"], {**CHAT, "metadata": {"delay": 5}}))
    await asyncio.sleep(0.3)
    await governor.store.kill("tenant:other", "test", "admin")
    status, headers, body = await asyncio.wait_for(call, 2)  # not the replica's 5 s
    assert status == 503 and json.loads(body)["error"]["code"] == "disabled_by_operator"
    assert headers["x-should-retry"] == "false" and not governor.active
    governor.trail.close()
    (audit,) = (tmp_path / "audit").glob("*.jsonl")
    outcome = [json.loads(line) for line in audit.read_text().splitlines() if '"completed"' in line][-1]
    assert (outcome["outcome"], outcome["status"], outcome["charged_tokens"]) == ("killed", 503, 0)


async def test_the_tenant_timeout_ends_a_stream_in_band(governed) -> None:
    base, keys, _, _, _ = governed
    slow = {**CHAT, "stream": True, "metadata": {"chunks": 100, "delay": 0.05}}
    status, _, body = await post(base, keys["a"], slow)
    events = [e for e in body.split(b"\n\n") if e]
    assert status == 200 and json.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == "timeout"


async def test_the_tenant_timeout_before_any_response_is_504_on_record(governed) -> None:
    base, keys, _, governor, tmp_path = governed
    status, _, body = await post(base, keys["a"], {**CHAT, "metadata": {"delay": 3}})
    assert status == 504 and json.loads(body)["error"]["code"] == "timeout"
    governor.trail.close()
    (audit,) = (tmp_path / "audit").glob("*.jsonl")
    outcome = [json.loads(line) for line in audit.read_text().splitlines() if '"completed"' in line][-1]
    assert (outcome["outcome"], outcome["status"]) == ("timeout", 504)


async def test_store_down_fails_closed(governed) -> None:
    base, keys, _, governor, _ = governed
    real = governor.store
    governor.store = open_store(f"redis://127.0.0.1:{free_port()}/0", Path("/nonexistent"))  # nobody listens
    try:
        status, headers, body = await post(base, keys["a"], CHAT)
    finally:
        await governor.store.close()
        governor.store = real
    assert status == 503 and json.loads(body)["error"]["code"] == "governance_unavailable"
    assert "state store unavailable" in json.loads(body)["error"]["message"]
    assert governor.trail.metrics.store_errors.labels("admit")._value.get() == 1


async def test_every_request_has_a_verifiable_audit_record(governed) -> None:
    base, keys, _, governor, tmp_path = governed
    await post(base, keys["a"], CHAT)
    await post(base, "pk-wrong", CHAT)
    governor.trail.close()
    files = sorted((tmp_path / "audit").glob("*.jsonl"))
    assert verify(files) == []
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    phases = [(r.get("phase"), r.get("status")) for r in records if r.get("event") == "request"]
    assert phases == [("admitted", None), ("completed", 200), ("refused", 401)]


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_request_metrics_by_model_tenant_route_status_and_decision(governed) -> None:
    base, keys, _, governor, _ = governed
    metrics = governor.trail.metrics
    assert (await post(base, keys["a"], CHAT))[0] == 200
    streamed = {**CHAT, "stream": True, "metadata": {"chunks": 4, "delay": 0.03}}
    assert (await post(base, keys["a"], streamed))[0] == 200
    assert (await post(base, "pk-wrong", CHAT))[0] == 401
    assert (await post(base, keys["b"], {**CHAT, "model": "nope"}))[0] == 404

    def requests(**labels: str) -> float | None:
        return sample(metrics, "paddock_requests_total", **labels)

    assert requests(model="chat", tenant="acme", route="chat", status="200", decision="admitted") == 2
    assert requests(model="unknown", tenant="none", route="chat", status="401", decision="refused") == 1
    assert requests(model="unknown", tenant="other", route="chat", status="404", decision="refused") == 1
    assert sample(metrics, "paddock_tokens_total", model="chat", tenant="acme", kind="prompt") == 14
    assert sample(metrics, "paddock_tokens_total", model="chat", tenant="acme", kind="completion") == 6
    assert sample(metrics, "paddock_request_duration_seconds_count", model="chat", route="chat") == 2
    assert sample(metrics, "paddock_time_to_first_token_seconds_count", model="chat") == 1  # streams only
    itl_count = sample(metrics, "paddock_inter_token_latency_seconds_count", model="chat") or 0
    itl_sum = sample(metrics, "paddock_inter_token_latency_seconds_sum", model="chat") or 0
    assert itl_count >= 3 and itl_sum >= 0.03 * 3  # the replica paused 30 ms between its chunks
    assert sample(metrics, "paddock_inflight_requests", model="chat", tenant="acme") == 0
    assert sample(metrics, "paddock_governance_decisions_total", decision="deny", reason="invalid_api_key") == 1


async def test_metrics_app_serves_tenant_limits_and_budget_use(governed) -> None:
    base, keys, _, governor, _ = governed
    metrics = governor.trail.metrics
    assert (await post(base, keys["a"], CHAT))[0] == 200
    app = MetricsApp(metrics, lambda: refresh_tenant_gauges(governor, metrics.tenants), refresh_interval_s=0)
    served = await serve(app, lifespan="off")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{served.url}/metrics") as response:
                assert response.status == 200
                assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
            async with session.get(f"{served.url}/v1/models") as response:
                assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    finally:
        await served.stop()
    assert 'paddock_tenant_limit{limit="tokens_per_minute",tenant="acme"} 5000.0' in text
    assert 'paddock_tenant_budget_used_tokens{period="day",tenant="acme"} 10.0' in text
    assert 'paddock_tenant_budget_used_tokens{period="month",tenant="other"} 0.0' in text
    assert (
        'paddock_requests_total{decision="admitted",model="chat",route="chat",status="200",tenant="acme"} 1.0' in text
    )
    # Prometheus' own linter accepts every metric we export
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
