"""Anthropic's Messages API through the governed ingress: a real Governor, a replica serving the fake engine.

Errors on Anthropic's routes are in Anthropic's shape (and statuses); OpenAI's routes keep OpenAI's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.standins import OneReplicaDirectory, serve
from service.api.ingress import IngressApp
from service.api.replica import ReplicaApp
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.config.settings import Settings
from service.engine.fake import FakeEngine
from service.governance.factory import build_governor
from service.governance.keys import hash_key, new_key
from service.governance.params import shape_request
from service.governance.policy import Parameters
from service.governance.refusal import Refusal
from service.observability.metrics import ServiceMetrics
from service.protocol import errors
from service.protocol.routes import COUNT_TOKENS, MESSAGES, ROUTES

TOKEN = "internal"
CONFIG = parse_config(
    {
        "models": [
            {"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 1000},
            {"id": "embed", "task": "embed", "source": {"path": "/e"}, "kv_cache_memory": "1GiB"},
        ],
        "ingress": {"max_body_bytes": 4096},
    },
    "test",
)
HI = {"model": "chat", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
}


@pytest.fixture
async def anthropic(tmp_path: Path):
    keys = {name: new_key() for name in ("a", "b", "slow", "frozen", "narrow")}
    tenants: list[dict[str, Any]] = [
        {"id": "acme", "models": ["*"], "parameters": {"max_output_tokens": 50}, "key": "a"},
        {"id": "other", "models": ["*"], "key": "b"},
        {"id": "metered", "models": ["chat"], "limits": {"requests_per_minute": 2}, "key": "slow"},
        {"id": "frozen", "enabled": False, "models": ["*"], "key": "frozen"},
        {"id": "narrow", "models": ["embed"], "key": "narrow"},
    ]
    for tenant in tenants:
        name = tenant.pop("key")
        tenant["keys"] = [{"id": f"k-{name}", "hash": hash_key(keys[name])}]
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    engine = FakeEngine("chat", words=tuple(f"w{i}" for i in range(5)))
    replica = await serve(ReplicaApp(engine, TOKEN, max_ongoing=8, max_body_bytes=1 << 20), lifespan="off")
    settings = Settings(state_dir=tmp_path, governance_file=path, audit_stdout=False, admin_token="t")
    governor = build_governor(CONFIG, settings, ServiceMetrics(), kill_poll_s=0.05, lease_ttl_s=3)
    await governor.start()
    directory = OneReplicaDirectory(Endpoint(replica.url, "r"))
    served = await serve(IngressApp(CONFIG, directory, Upstream(TOKEN), governor))
    yield served.url, keys, engine, governor
    await served.stop()
    await governor.stop()
    await replica.stop()


async def call(
    base: str, body: object, headers: dict[str, str] | None = None, path: str = MESSAGES, method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        async with session.request(method, base + path, data=data, headers=headers or {}) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read()


def anthropic_error(status: int, body: bytes, kind: str) -> str:
    """The message of an error body in Anthropic's shape (and nothing of OpenAI's)."""
    payload = json.loads(body)
    assert payload["type"] == "error" and set(payload) == {"type", "error"}, payload
    assert set(payload["error"]) == {"type", "message"} and payload["error"]["type"] == kind, (status, payload)
    return str(payload["error"]["message"])


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            event, data = block.split("\n", 1)
            parsed.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


# -- the routes -------------------------------------------------------------------------


async def test_a_message_with_x_api_key_is_answered_and_settled(anthropic) -> None:
    base, keys, engine, governor = anthropic
    status, headers, body = await call(base, HI, {"x-api-key": keys["a"]})
    message = json.loads(body)
    assert status == 200 and message["type"] == "message" and message["content"][0]["text"].startswith("w0")
    assert headers["request-id"] == headers["x-request-id"]
    operation, forwarded, _ = engine.calls[-1]
    assert operation == "messages" and forwarded["max_tokens"] == 20 and forwarded["cache_salt"]
    rows = await governor.store.usage()
    expected = (FakeEngine.input_tokens(HI), 5)
    assert [(r.tenant, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [("acme", 1, *expected)]


async def test_the_output_cap_is_applied_to_max_tokens(anthropic) -> None:
    base, keys, engine, _ = anthropic
    status, _, _ = await call(base, {**HI, "max_tokens": 500}, {"x-api-key": keys["a"]})
    assert status == 200 and engine.calls[-1][1]["max_tokens"] == 50


async def test_a_stream_is_anthropics_events_and_its_usage_is_charged(anthropic) -> None:
    base, keys, _, governor = anthropic
    status, headers, body = await call(base, {**HI, "stream": True}, {"authorization": f"Bearer {keys['b']}"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in sse_events(body)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_delta") == 5  # none dropped: Anthropic's usage events are not OpenAI's
    (row,) = await governor.store.usage()
    assert (row.tenant, row.prompt_tokens, row.completion_tokens) == ("other", FakeEngine.input_tokens(HI), 5)


async def test_count_tokens_is_governed_but_charges_no_tokens(anthropic) -> None:
    base, keys, engine, governor = anthropic
    body = {"model": "chat", "messages": HI["messages"], "system": "Be brief."}
    status, _, answer = await call(base, body, {"x-api-key": keys["a"]}, path=COUNT_TOKENS)
    assert status == 200 and json.loads(answer) == {"input_tokens": FakeEngine.input_tokens(body)}
    assert engine.calls[-1][0] == "count_tokens"
    (row,) = await governor.store.usage()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 0, 0)
    status, _, answer = await call(base, body, {}, path=COUNT_TOKENS)
    anthropic_error(status, answer, "authentication_error")


async def test_count_tokens_counts_against_the_request_rate(anthropic) -> None:
    base, keys, _, _ = anthropic
    body = {"model": "chat", "messages": HI["messages"]}
    statuses = [(await call(base, body, {"x-api-key": keys["slow"]}, path=COUNT_TOKENS))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


# -- refusals and errors, in Anthropic's shape ------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({}, 401, "authentication_error"),
        ({"x-api-key": "pk-not-a-key"}, 401, "authentication_error"),
        ({"authorization": "Bearer pk-not-a-key"}, 401, "authentication_error"),
    ],
)
async def test_authentication_failures(anthropic, headers: dict[str, str], status: int, kind: str) -> None:
    base, _, _, _ = anthropic
    got, _, body = await call(base, HI, headers)
    assert got == status
    anthropic_error(got, body, kind)


async def test_refusals_by_kind(anthropic) -> None:
    base, keys, _, _ = anthropic
    cases: list[tuple[str, object, int, str]] = [
        ("frozen", HI, 403, "permission_error"),  # the tenant is disabled
        ("narrow", HI, 404, "not_found_error"),  # a model the key may not use reads as unknown
        ("a", {**HI, "model": "nope"}, 404, "not_found_error"),
        ("a", {**HI, "model": "embed"}, 400, "invalid_request_error"),  # not a generating model
        ("a", {**HI, "n": 2}, 400, "invalid_request_error"),  # not one of Anthropic's fields
        ("a", {**HI, "max_tokens": 0}, 400, "invalid_request_error"),
        ("a", {**HI, "messages": ["x" * 5000]}, 413, "request_too_large"),
        ("a", b"not json", 400, "invalid_request_error"),
    ]
    for key, body, status, kind in cases:
        got, _, answer = await call(base, body, {"x-api-key": keys[key]})
        assert got == status, (key, body, answer)
        anthropic_error(got, answer, kind)


async def test_rate_limits_are_429_rate_limit_error(anthropic) -> None:
    base, keys, _, _ = anthropic
    answers = [await call(base, HI, {"x-api-key": keys["slow"]}) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    status, headers, body = answers[-1]
    assert "retry-after" in headers
    anthropic_error(status, body, "rate_limit_error")


async def test_other_methods_and_unknown_anthropic_paths(anthropic) -> None:
    base, keys, _, _ = anthropic
    status, _, body = await call(base, b"", {"x-api-key": keys["a"]}, method="GET")
    assert status == 405
    anthropic_error(status, body, "invalid_request_error")
    status, _, body = await call(base, HI, {"x-api-key": keys["a"]}, path="/v1/messages/batches")
    assert status == 404
    anthropic_error(status, body, "not_found_error")


async def test_openai_routes_keep_openais_shape(anthropic) -> None:
    base, keys, _, _ = anthropic
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    status, _, body = await call(base, chat, {"x-api-key": keys["a"]}, path="/v1/chat/completions")
    assert status == 401  # x-api-key is Anthropic's header: OpenAI's routes take a bearer key only
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


async def test_a_kill_refuses_with_529_and_ends_a_running_stream_in_band(anthropic) -> None:
    base, keys, engine, governor = anthropic
    engine.words, engine.delay_s = tuple(f"w{i}" for i in range(300)), 0.005
    running = asyncio.create_task(call(base, {**HI, "stream": True}, {"x-api-key": keys["b"]}))
    await asyncio.sleep(0.3)
    await governor.store.kill("tenant:other", "test", "admin")
    status, _, body = await asyncio.wait_for(running, 3)
    events = sse_events(body)
    assert status == 200 and events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "overloaded_error"
    assert "disabled by its operators" in data["error"]["message"]
    status, headers, body = await call(base, HI, {"x-api-key": keys["b"]})
    assert status == 529 and headers["x-should-retry"] == "false"
    anthropic_error(status, body, "overloaded_error")
    assert not governor.active


# -- the status mapping and the parameter policy of Anthropic's routes -----------------


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (errors.invalid_request("x"), 400, "invalid_request_error"),
        (errors.APIError(401, "x", type="authentication_error"), 401, "authentication_error"),
        (errors.APIError(403, "x", type="permission_error"), 403, "permission_error"),
        (errors.model_not_found("m"), 404, "not_found_error"),
        (errors.method_not_allowed("GET", "/v1/messages", ("POST",)), 405, "invalid_request_error"),
        (errors.payload_too_large(10), 413, "request_too_large"),
        (errors.APIError(429, "x", type="insufficient_quota"), 429, "rate_limit_error"),
        (errors.internal(), 500, "api_error"),
        (errors.from_status(502), 500, "api_error"),
        (errors.overloaded(), 529, "overloaded_error"),
        (errors.unavailable("x"), 529, "overloaded_error"),
        (errors.timeout(), 504, "timeout_error"),
    ],
)
def test_anthropic_statuses_and_types(error: errors.APIError, status: int, kind: str) -> None:
    worded = errors.in_dialect(error, "anthropic")
    assert (worded.status, worded.type) == (status, kind) and kind in ANTHROPIC_TYPES
    assert json.loads(worded.body()) == {"type": "error", "error": {"type": kind, "message": error.message}}
    assert worded.sse_event().startswith(b"event: error\ndata: {")
    assert worded.headers == error.headers and errors.in_dialect(error, "openai") is error


@pytest.mark.parametrize("path", [MESSAGES, COUNT_TOKENS])
def test_every_documented_anthropic_field_passes_the_allow_list(path: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for field in sorted(ROUTES[path].fields):
        try:
            shape_request(path, {**base, field: None}, Parameters(), max_model_len=100, cache_salt=None)
        except Refusal as error:
            assert error.reason != "unknown_parameter", (path, field)


def test_the_reservation_covers_the_system_prompt_and_max_tokens() -> None:
    body = {**HI, "system": "s" * 200}
    shaped = shape_request(MESSAGES, body, Parameters(), max_model_len=1000, cache_salt=None)
    assert shaped.reserve_tokens >= 200 + 20
    assert shape_request(COUNT_TOKENS, {"model": "m", "messages": []}, Parameters(), max_model_len=9, cache_salt=None)
