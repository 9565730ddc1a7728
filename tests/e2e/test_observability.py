"""Observability through the real stack: one connected trace per request at a real OTLP receiver,
and Paddock's, vLLM's and Ray Serve's metrics scraped by a real Prometheus server."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.prometheus import Prometheus, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
CHAT = "smollm2-135m-instruct"
SERVER, INTERNAL = 2, 1  # OTLP span kinds
ENGINE_PHASES = ("engine.queue", "engine.prefill", "engine.decode")


def test_a_streamed_chat_is_one_connected_trace(stack) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    marker = "zebra" + secrets.token_hex(4)  # prompt text must never reach a span
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": f"Say {marker} twice."}],
        "max_tokens": 6,
        "ignore_eos": True,  # the random marker must not let the model stop early: the finish is "length"
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    with (
        stack.http("acme", timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    usage = events[-1]["usage"]

    spans = stack.traces.wait_for(
        trace_id, {f"chat {CHAT}", "governance", "replica chat", "llm_request", *ENGINE_PHASES}
    )
    by_name = {s.name: s for s in spans}
    ingress, governance, replica = by_name[f"chat {CHAT}"], by_name["governance"], by_name["replica chat"]
    # one tree: the caller's span → ingress → governance, and ingress → replica → engine
    assert ingress.parent_span_id == caller_span and ingress.kind == SERVER
    assert governance.parent_span_id == ingress.span_id and governance.kind == INTERNAL
    assert replica.parent_span_id == ingress.span_id and replica.kind == SERVER
    assert by_name["llm_request"].parent_span_id == replica.span_id
    for name in ENGINE_PHASES:
        assert by_name[name].parent_span_id == replica.span_id
    queue, prefill, decode = (by_name[n] for n in ENGINE_PHASES)
    assert queue.end_ns <= prefill.start_ns + 1000 and prefill.end_ns <= decode.start_ns + 1000
    assert ingress.start_ns <= replica.start_ns <= queue.start_ns and decode.end_ns <= ingress.end_ns

    a = ingress.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == CHAT
    assert a["gen_ai.request.max_tokens"] == 6
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    reported = [c["finish_reason"] for e in events for c in e.get("choices", ()) if c.get("finish_reason")]
    assert reported == ["length"] and a["gen_ai.response.finish_reasons"] == reported
    assert a["paddock.tenant"] == "acme" and a["paddock.request_id"] == request_id
    assert a["http.response.status_code"] == 200 and governance.attributes["paddock.decision"] == "admitted"
    assert by_name["llm_request"].attributes["gen_ai.usage.prompt_tokens"] == usage["prompt_tokens"]
    assert ingress.resource["service.name"] == "paddock" and ingress.protocol == "grpc"
    assert all(marker not in json.dumps(s.attributes) for s in stack.traces.trace(trace_id))


def test_a_refused_request_is_traced_with_its_status(stack) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    with stack.http("frozen") as http:
        assert http.post("/v1/chat/completions", json={"model": CHAT}, headers=headers).status_code == 403
    spans = stack.traces.wait_for(trace_id, {"chat", "governance"})
    ingress = next(s for s in spans if s.name == "chat")
    assert ingress.attributes["http.response.status_code"] == 403
    assert ingress.attributes["paddock.decision"] == "refused"


# -- Prometheus -------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(stack) -> Iterator[Prometheus]:
    """A real Prometheus server scraping the stack's metrics port and Ray's metrics agent every second."""
    targets = {
        "paddock": urllib.parse.urlsplit(stack.metrics_url).netloc,
        "ray": urllib.parse.urlsplit(stack.ray_metrics_url).netloc,
    }
    server = start_prometheus(targets, Path(tempfile.mkdtemp(prefix="pd-prom-")))
    try:
        yield server
    finally:
        server.stop(keep=os.environ.get("PADDOCK_KEEP_PROMETHEUS") is not None)


def _until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _traffic(stack) -> None:
    """Chats (one prompt twice, for prefix-cache hits), a refusal, a rate limit and a kill."""
    prompt = "Explain in one sentence why the sky is blue, as a physicist would. " * 24  # > 1 KV block (128 on CPU)
    client = stack.client("acme")
    for _ in range(2):
        stream = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": prompt}], max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with stack.http(None) as http:  # a bad key, from an address of its own (auth failures are throttled per client)
        bad = {"authorization": "Bearer pk-nope", "x-forwarded-for": "198.51.100.77"}
        assert http.post("/v1/chat/completions", json={"model": CHAT}, headers=bad).status_code == 401
    metered = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with stack.http("metered") as http:
        statuses = [http.post("/v1/chat/completions", json=metered).status_code for _ in range(3)]
    assert statuses[-1] == 429
    assert stack.admin("POST", "/admin/v1/disable", {"scope": "key", "id": "key-metered-kill"})[0] == 200
    try:
        with stack.http("metered-kill") as http:
            _until(lambda: http.post("/v1/chat/completions", json=metered).status_code == 503, 10, "the kill")
    finally:
        stack.admin("POST", "/admin/v1/enable", {"scope": "key", "id": "key-metered-kill"})


def test_real_prometheus_scrapes_requests_tokens_engine_and_serve_metrics(stack, prometheus: Prometheus) -> None:
    _traffic(stack)
    ok = f'paddock_requests_total{{tenant="acme",model="{CHAT}",route="chat",status="200",decision="admitted"}}'
    _until(lambda: sum(prometheus.values(ok)) >= 2, 30, "request counters")
    assert sum(prometheus.values(f'paddock_tokens_total{{tenant="acme",model="{CHAT}",kind="completion"}}')) > 0
    assert prometheus.values('paddock_requests_total{status="401",tenant="none",decision="refused"}')
    limited = 'paddock_rate_limited_requests_total{tenant="metered",limit="requests_per_minute"}'
    _until(lambda: sum(prometheus.values(limited)) >= 1, 30, "the rate-limited counter")
    _until(lambda: sum(prometheus.values('paddock_killed_requests_total{scope="key"}')) >= 1, 30, "kills")
    assert prometheus.values('paddock_tenant_limit{tenant="metered",limit="tokens_per_day"}') == [100000.0]
    _until(lambda: prometheus.values('paddock_tenant_budget_used_tokens{tenant="metered",period="day"}'), 30, "budgets")
    assert sum(prometheus.values(f'paddock_time_to_first_token_seconds_count{{model="{CHAT}"}}')) >= 2
    # vLLM's engine metrics come through Ray's metrics agent, renamed vllm:* -> ray_vllm_*
    engine = f'ray_vllm_time_to_first_token_seconds_count{{model_name="{CHAT}"}}'
    _until(lambda: sum(prometheus.values(engine)) >= 2, 60, "vLLM's TTFT histogram through Ray")
    _until(lambda: sum(prometheus.values("ray_vllm_prefix_cache_hits_total")) > 0, 60, "prefix-cache hits")
    assert prometheus.values(f'ray_vllm_kv_cache_usage_perc{{model_name="{CHAT}"}}')
    healthy = 'ray_serve_deployment_replica_healthy{deployment="model-smollm2-135m-instruct"}'
    assert sum(prometheus.values(healthy)) >= 1


def test_every_metric_the_dashboards_and_alerts_use_exists(stack, prometheus: Prometheus) -> None:
    from tests.observability.promql import referenced_metrics

    _traffic(stack)
    time.sleep(3)  # two scrapes after the traffic
    exported = prometheus.metric_names()
    missing = sorted(referenced_metrics() - exported)
    assert not missing, f"dashboards or rules use metrics nobody exports: {missing}"


def test_the_dashboards_main_panels_render_from_real_data(stack, prometheus: Prometheus, tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_dashboards", ROOT / "scripts" / "render_dashboards.py")
    assert spec and spec.loader
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)
    _traffic(stack)
    time.sleep(3)
    out = tmp_path / "dashboards.png"
    end = time.time()
    counts = renderer.render(prometheus.url, end - 300, end, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    for title in ("Requests per second by model", "Time to first token (streams)", "Tokens per second by tenant"):
        assert counts[title] > 0, f"{title}: no series"
    assert counts["KV-cache usage"] > 0 and counts["Running and waiting requests"] > 0
