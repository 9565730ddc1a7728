"""Tracing at the ingress, exported over OTLP/HTTP to a real receiver (the e2e test covers gRPC)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from harness.standins import OneReplicaDirectory, serve, serve_handler
from service.api.ingress import IngressApp
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.observability.tracing import Tracing, otlp_exporter, otlp_traces_endpoint
from tests.otlp_receiver import OtlpReceiver

TOKEN = "internal"
CONFIG = parse_config({"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"}]}, "test")


@pytest.fixture
async def traced(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, list[dict[str, str]], OtlpReceiver, Tracing]]:
    receiver = OtlpReceiver()
    port = receiver.start_http()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in (
            {"choices": [{"index": 0, "delta": {"content": "Paris"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
        ):
            await response.write(f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream = await serve_handler(handle)
    tracing = Tracing(otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}), "ingress")
    app = IngressApp(CONFIG, OneReplicaDirectory(Endpoint(upstream.url, "r")), Upstream(TOKEN), tracing=tracing)
    served = await serve(app)
    yield served.url, seen, receiver, tracing
    await served.stop()
    await upstream.stop()
    tracing.shutdown()
    receiver.stop()


async def test_ingress_span_continues_the_callers_trace_and_parents_the_replica(traced) -> None:
    base, seen, receiver, tracing = traced
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    body = {"model": "chat", "messages": [{"role": "user", "content": "secret prompt"}], "stream": True, "top_p": 0.5}
    headers = {"traceparent": f"00-{trace_id}-{caller}-01", "x-request-id": "rid-1"}
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200
            await response.read()
    await asyncio.to_thread(tracing.provider.force_flush)
    spans = await asyncio.to_thread(receiver.wait_for, trace_id, {"chat chat"})
    span = spans[0]
    assert span.parent_span_id == caller and span.protocol == "http" and span.kind == 2
    forwarded = seen[-1]["traceparent"].split("-")
    assert forwarded[1] == trace_id and forwarded[2] == span.span_id  # the replica's parent is the ingress span
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "chat"
    assert a["gen_ai.request.top_p"] == 0.5 and a["gen_ai.response.finish_reasons"] == ["stop"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (9, 2)
    assert a["paddock.request_id"] == "rid-1" and a["paddock.decision"] == "ungoverned"
    assert a["http.response.status_code"] == 200 and "secret prompt" not in json.dumps(a)
    assert span.resource["paddock.component"] == "ingress"


def test_otlp_endpoints_follow_the_standard_variables() -> None:
    assert otlp_traces_endpoint({}) == "http://localhost:4318/v1/traces"
    assert otlp_traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert otlp_traces_endpoint(grpc) == "http://c:4317"
    explicit = {**grpc, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1"}
    assert otlp_traces_endpoint(explicit) == "http://t:1"
    with pytest.raises(ValueError, match="grpc and http/protobuf"):
        otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_log_lines_are_json_with_the_request_ids() -> None:
    import io
    import logging

    from service.observability.logs import CURRENT, JsonFormatter, trace_id_of
    from service.observability.requests import Observation

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("service.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    trace_id = secrets.token_hex(16)
    obs = Observation("chat", "admitted", "rid-9", trace_id_of(f"00-{trace_id}-{secrets.token_hex(8)}-01"))
    obs.tenant, obs.model = "acme", "chat"
    logger.warning("outside")
    token = CURRENT.set(obs)
    try:
        logger.warning("inside %s", "a request")
    finally:
        CURRENT.reset(token)
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert outside["level"] == "warning" and outside["message"] == "outside" and "request_id" not in outside
    assert outside["time"].endswith("Z") and outside["logger"] == "service.test.logs"
    assert inside["message"] == "inside a request"
    assert (inside["request_id"], inside["trace_id"], inside["tenant"], inside["model"]) == (
        "rid-9",
        trace_id,
        "acme",
        "chat",
    )
    assert trace_id_of("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None  # the all-zero trace id is invalid
    assert trace_id_of("garbage") is None
