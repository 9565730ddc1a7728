"""Hostile clients at the front door: each attack sent over a real socket to the real servers.

The API port, the admin port and a replica's internal port run behind ``service.serve.door`` (see
``front_door.py``: a governed ingress, its admin API and a replica around the fake engine). Bad input
always gets a clear OpenAI-shaped 4xx, never a 5xx or a hang, and the service keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from service.config.settings import DoorLimits
from service.protocol.errors import MAX_MESSAGE_CHARS
from tests.api.front_door import (
    ADMIN_TOKEN,
    CHAT,
    Stack,
    credentials,
    exchange,
    read_answer,
    request_head,
    start_stack,
)

LIMITS = DoorLimits(header_timeout_s=1.0, body_timeout_s=1.0, linger_s=0.5)
PORTS = ["api", "admin", "replica"]
PATHS = {"api": "/v1/chat/completions", "admin": "/admin/v1/disable", "replica": "/v1/chat/completions"}


@pytest.fixture
async def stack(tmp_path: Path):
    served = await start_stack(tmp_path, LIMITS)
    yield served
    await served.stop()


async def still_serves(stack: Stack) -> None:
    """An ordinary client is answered after the attack."""
    async with aiohttp.ClientSession() as session:
        headers = credentials(stack, "api")
        async with session.post(f"http://127.0.0.1:{stack.api}/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 200, await r.text()


def post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = {**headers, "content-type": "application/json", "content-length": str(len(body))}
    return request_head("POST", path, head) + body


# -- headers -----------------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
async def test_a_2_mib_header_is_431_and_the_connection_ends(stack, port) -> None:
    data = request_head("GET", "/health", {"x-big": "a" * (2 << 20)})
    answer = await exchange(stack.port(port), data)
    assert answer.status == 431 and answer.closed
    assert answer.error()["code"] == "request_header_fields_too_large"
    assert re.fullmatch("[0-9a-f]{32}", answer.headers["x-request-id"])  # a refusal the client can quote
    await still_serves(stack)


@pytest.mark.parametrize("port", PORTS)
async def test_20000_headers_are_431(stack, port) -> None:
    many = [(f"x-h{i}", "v") for i in range(20_000)]
    answer = await exchange(stack.port(port), request_head("GET", "/health", many))
    assert answer.status == 431 and answer.closed
    few_but_too_many = [(f"x-h{i}", "v") for i in range(LIMITS.max_headers + 1)]  # well under the byte limit
    answer = await exchange(stack.port(port), request_head("GET", "/health", few_but_too_many))
    assert answer.status == 431 and "header fields" in answer.error()["message"]
    await still_serves(stack)


async def test_a_header_under_the_limits_is_served(stack) -> None:
    headers = {**credentials(stack, "api"), "x-fine": "b" * 8000, **{f"x-h{i}": "v" for i in range(80)}}
    answer = await exchange(stack.api, post("/v1/chat/completions", json.dumps(CHAT).encode(), headers))
    assert answer.status == 200


@pytest.mark.parametrize("port", PORTS)
async def test_headers_dripped_a_byte_at_a_time_get_408_after_the_header_timeout(stack, port) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port(port))
    started = time.monotonic()
    data = request_head("GET", "/health", {"x-slow": "z" * 100})

    async def drip() -> None:
        for byte in data:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        answer = await read_answer(reader, started)
    finally:
        dripping.cancel()
        writer.close()
    assert answer.status == 408 and answer.closed and answer.error()["code"] == "request_timeout"
    assert re.fullmatch("[0-9a-f]{32}", answer.headers["x-request-id"])
    assert LIMITS.header_timeout_s - 0.1 <= answer.elapsed_s < LIMITS.header_timeout_s + 1.5


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.api)
    answer = await read_answer(reader, time.monotonic())
    writer.close()
    assert answer.status == 408 and answer.closed and answer.elapsed_s < LIMITS.header_timeout_s + 1.5


async def test_malformed_http_is_an_openai_400(stack) -> None:
    answer = await exchange(stack.api, b"GARBAGE / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.status == 400 and answer.closed and answer.error()["code"] == "invalid_http"


async def test_an_upgrade_is_answered_as_plain_http_and_the_connection_ends(stack) -> None:
    upgrade = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13"}
    answer = await exchange(stack.api, request_head("GET", "/health", upgrade) + b"\x81\x85garbage")
    assert answer.status == 200 and answer.closed


# -- bodies ------------------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
async def test_a_declared_100_mb_body_is_413_at_once_without_reading_it(stack, port) -> None:
    head = {**credentials(stack, port), "content-type": "application/json", "content-length": "100000000"}
    answer = await exchange(stack.port(port), request_head("POST", PATHS[port], head))
    assert answer.status == 413 and answer.closed and answer.error()["code"] == "payload_too_large"
    assert answer.elapsed_s < LIMITS.body_timeout_s  # decided from the header, not by waiting for the body


async def test_a_declared_body_without_a_key_is_answered_and_the_connection_closed(stack) -> None:
    head = {"content-type": "application/json", "content-length": "100000000"}
    answer = await exchange(stack.api, request_head("POST", "/v1/chat/completions", head))
    assert answer.status == 401 and answer.closed and answer.elapsed_s < LIMITS.body_timeout_s


@pytest.mark.parametrize("port", PORTS)
async def test_a_stalled_body_is_408_after_the_body_timeout(stack, port) -> None:
    head = {**credentials(stack, port), "content-type": "application/json", "content-length": "1000"}
    answer = await exchange(stack.port(port), request_head("POST", PATHS[port], head) + b'{"model": ')
    assert answer.status == 408 and answer.closed and answer.error()["code"] == "request_timeout"
    assert LIMITS.body_timeout_s - 0.1 <= answer.elapsed_s < LIMITS.body_timeout_s + 1.5
    if port == "api":
        (record,) = stack.records(phase="refused", reason="request_timeout")
        assert record["status"] == 408 and record["tenant"] == "acme"
    await still_serves(stack)


async def test_the_connection_cap_refuses_new_connections_and_keeps_the_admitted_ones(tmp_path: Path) -> None:
    limits = DoorLimits(max_connections=4, header_timeout_s=30.0)
    stack = await start_stack(tmp_path, limits)
    idle = []
    try:
        async with aiohttp.ClientSession() as session:  # one connection, admitted and streaming
            stack.engine.delay_s, stack.engine.words = 0.05, tuple(f"w{i}" for i in range(20))
            headers, url = credentials(stack, "api"), f"http://127.0.0.1:{stack.api}/v1/chat/completions"
            async with session.post(url, json={**CHAT, "stream": True}, headers=headers) as streaming:
                assert streaming.status == 200
                idle = [await asyncio.open_connection("127.0.0.1", stack.api) for _ in range(3)]
                await asyncio.sleep(0.1)
                answer = await exchange(stack.api, request_head("GET", "/health"))
                assert answer.status == 503 and answer.closed and answer.error()["code"] == "overloaded"
                assert answer.headers["retry-after"] == "1"
                body = await streaming.read()  # the admitted stream is not disturbed
                assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: {") == 20
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.2)
        assert (await exchange(stack.api, request_head("GET", "/health"))).status == 200
    finally:
        await stack.stop()


# -- the parser --------------------------------------------------------------


HOSTILE_BODIES = {
    "deep arrays": b'{"model": "chat", "messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "deep objects": b'{"model": "chat", "x": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    "lone surrogate": b'{"model": "chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "lone low surrogate key": b'{"model": "chat", "\\udc00": 1, "messages": []}',
    "encoded surrogate": b'{"model": "chat", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    "NaN": b'{"model": "chat", "messages": [], "temperature": NaN}',
    "Infinity": b'{"model": "chat", "messages": [], "temperature": Infinity}',
    "-Infinity": b'{"model": "chat", "messages": [], "top_p": -Infinity}',
    "overflowing float": b'{"model": "chat", "messages": [], "temperature": 1e999}',
    "huge integer": b'{"model": "chat", "messages": [], "seed": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("port", ["api", "admin"])
async def test_hostile_json_is_an_openai_400_and_never_reaches_the_engine(stack, port) -> None:
    for name, body in HOSTILE_BODIES.items():
        answer = await exchange(stack.port(port), post(PATHS[port], body, credentials(stack, port)))
        assert answer.status == 400, (name, answer.body[:300])
        assert answer.error()["type"] == "invalid_request_error", name
    assert stack.engine.calls == []
    await still_serves(stack)


async def test_hostile_json_is_refused_by_the_replica_too(stack) -> None:
    for body in HOSTILE_BODIES.values():
        answer = await exchange(stack.replica, post(PATHS["replica"], body, credentials(stack, "replica")))
        assert answer.status == 400
    assert stack.engine.calls == []


async def test_json_at_the_depth_limit_and_surrogate_pairs_are_served(stack) -> None:
    pair = '{"role": "user", "content": "\\ud83d\\ude00 \\\\ud800"}'  # an emoji as ensure_ascii writes it
    body = f'{{"model": "chat", "messages": [{pair}], "metadata": {"[" * 60 + "]" * 60}}}'.encode()
    answer = await exchange(stack.api, post(PATHS["api"], body, credentials(stack, "api")))
    assert answer.status == 200, answer.body
    (_, seen, _), *_ = stack.engine.calls
    assert seen["messages"][0]["content"] == "\U0001f600 \\ud800"


async def test_a_1_mib_model_name_is_not_echoed_back_whole(stack) -> None:
    body = json.dumps({**CHAT, "model": "m" * (1 << 20)}).encode()
    answer = await exchange(stack.api, post(PATHS["api"], body, credentials(stack, "api")))
    error = answer.error()
    assert answer.status == 404 and error["code"] == "model_not_found"
    assert len(error["message"]) <= MAX_MESSAGE_CHARS and len(answer.body) < 2 * MAX_MESSAGE_CHARS
    assert error["message"].endswith("does not exist or you do not have access to it.")
    (record,) = stack.records(phase="refused", reason="model_not_found")
    assert len(json.dumps(record)) < 2 * MAX_MESSAGE_CHARS


async def test_a_1_mib_unknown_field_and_path_are_not_echoed_back_whole(stack) -> None:
    body = json.dumps({**CHAT, "x" * (1 << 20): 1}).encode()
    answer = await exchange(stack.api, post(PATHS["api"], body, credentials(stack, "api")))
    assert answer.status == 400 and len(answer.body) < 2 * MAX_MESSAGE_CHARS
    answer = await exchange(stack.api, request_head("GET", "/" + "p" * 30_000))
    assert answer.status == 404 and len(answer.body) < 2 * MAX_MESSAGE_CHARS


# -- identity ----------------------------------------------------------------


async def test_two_authorization_headers_are_refused_even_when_the_first_is_valid(stack) -> None:
    valid = f"Bearer {stack.key}"
    body = json.dumps(CHAT).encode()
    for second in (valid, "Bearer pk-someone-else"):
        headers = [("authorization", valid), ("authorization", second), ("content-length", str(len(body)))]
        answer = await exchange(stack.api, request_head("POST", "/v1/chat/completions", headers) + body)
        assert answer.status == 400 and answer.error()["code"] == "duplicate_header"
    headers = [("authorization", valid), ("authorization", valid)]
    answer = await exchange(stack.api, request_head("GET", "/v1/models", headers))
    assert answer.status == 400
    assert stack.engine.calls == []
    assert [r["status"] for r in stack.records(phase="refused", reason="duplicate_header")] == [400, 400, 400]


async def test_two_x_api_keys_are_refused_on_the_anthropic_route(stack) -> None:
    body = json.dumps({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = [("x-api-key", stack.key), ("x-api-key", "sk-other"), ("content-length", str(len(body)))]
    answer = await exchange(stack.api, request_head("POST", "/v1/messages", headers) + body)
    assert answer.status == 400 and json.loads(answer.body)["type"] == "error"  # in Anthropic's shape there
    headers = [("x-api-key", stack.key), ("content-length", str(len(body)))]
    assert (await exchange(stack.api, request_head("POST", "/v1/messages", headers) + body)).status == 200


async def test_two_admin_tokens_are_refused_and_recorded(stack) -> None:
    headers = [("authorization", f"Bearer {ADMIN_TOKEN}"), ("authorization", "Bearer guess")]
    answer = await exchange(stack.admin, request_head("GET", "/admin/v1/kills", headers))
    assert answer.status == 400 and answer.error()["code"] == "duplicate_header"
    (record,) = stack.records(event="admin", action="login_failed")
    assert record["after"] == "duplicate_header"


async def refused_client(stack: Stack, forwarded: list[str]) -> str:
    """The audit's ``client`` of a request with these ``X-Forwarded-For`` headers (refused: no key)."""
    before = len(stack.records(phase="refused"))
    headers = [("x-forwarded-for", value) for value in forwarded]
    answer = await exchange(stack.api, post("/v1/chat/completions", json.dumps(CHAT).encode(), dict(headers)))
    if len(forwarded) > 1:  # a dict keeps one: send them as separate lines
        answer = await exchange(stack.api, request_head("POST", "/v1/chat/completions", headers))
    assert answer.status == 401
    return stack.records(phase="refused")[before]["client"]


async def test_x_forwarded_for_is_not_believed_without_trusted_proxies(stack) -> None:
    """uvicorn's own trust of loopback proxies is off, and Paddock trusts none by default."""
    for forwarded in (["203.0.113.7"], ["not-an-ip"], ["203.0.113.7, 198.51.100.1"]):
        assert await refused_client(stack, forwarded) == "127.0.0.1"


async def test_x_forwarded_for_is_believed_only_as_far_as_trusted_proxies_and_well_formed_hops(tmp_path) -> None:
    stack = await start_stack(tmp_path, LIMITS, trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"])
    try:
        cases = {
            ("203.0.113.7",): "203.0.113.7",
            ("not-an-ip",): "127.0.0.1",  # a malformed hop: the trusted proxy that sent it is the client
            ("",): "127.0.0.1",
            ("203.0.113.7, not-an-ip",): "127.0.0.1",
            ("not-an-ip, 203.0.113.7",): "203.0.113.7",  # what the client wrote left of a real hop is ignored
            ("198.51.100.1, 203.0.113.7, 10.1.2.3",): "203.0.113.7",  # through a second trusted proxy
            ("::ffff:203.0.113.7",): "203.0.113.7",
            ("1.1.1.1", "203.0.113.7"): "203.0.113.7",  # two headers read as one list, in order
            ("203.0.113.7:443",): "127.0.0.1",  # not an address
        }
        for forwarded, client in cases.items():
            assert await refused_client(stack, list(forwarded)) == client, forwarded
    finally:
        await stack.stop()


# -- the audit of door events ------------------------------------------------


async def test_405s_are_on_the_record(stack) -> None:
    answer = await exchange(stack.api, request_head("GET", "/v1/chat/completions", credentials(stack, "api")))
    assert answer.status == 405 and answer.error()["code"] == "method_not_allowed"
    answer = await exchange(stack.api, request_head("DELETE", "/v1/models"))
    assert answer.status == 405
    records = stack.records(phase="refused", reason="method_not_allowed")
    assert [(r["route"], r["status"], r["client"]) for r in records] == [
        ("/v1/chat/completions", 405, "127.0.0.1"),
        ("/v1/models", 405, "127.0.0.1"),
    ]


@pytest.mark.parametrize(
    ("port", "method", "path", "allow"),
    [
        ("api", "GET", "/v1/chat/completions", "POST"),
        ("api", "PUT", "/v1/messages", "POST"),
        ("api", "POST", "/v1/models", "GET, HEAD"),
        ("api", "DELETE", "/health", "GET, HEAD"),
        ("api", "POST", "/openapi.json", "GET, HEAD"),
        ("admin", "TRACE", "/health", "GET, HEAD"),
        ("admin", "POST", "/openapi.json", "GET, HEAD"),
        ("admin", "PUT", "/admin/v1/kills", "GET"),
        ("admin", "GET", "/admin/v1/disable", "POST"),
        ("replica", "GET", "/v1/embeddings", "POST"),
    ],
)
async def test_every_405_says_in_allow_which_methods_the_path_takes(stack, port, method, path, allow) -> None:
    """Found by the fuzzer (test_fuzzer.py, RFC 9110): 405s without ``Allow``, and the admin port answering a
    wrong method with 404 (its token routes) or 200 (``/health``)."""
    answer = await exchange(stack.port(port), request_head(method, path, credentials(stack, port)))
    assert answer.status == 405 and answer.headers["allow"] == allow
    error = json.loads(answer.body)["error"]  # OpenAI's shape, or Anthropic's on /v1/messages
    assert error.get("code", "method_not_allowed") == "method_not_allowed" and allow in error["message"]


async def test_a_mid_body_disconnect_is_on_the_record(stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.api)
    head = {**credentials(stack, "api"), "content-type": "application/json", "content-length": "1000"}
    writer.write(request_head("POST", "/v1/chat/completions", head) + b'{"model": "chat", ')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(50):
        if records := stack.records(phase="refused", reason="client_disconnected"):
            break
        await asyncio.sleep(0.05)
    (record,) = records
    assert record["status"] == 499 and record["tenant"] == "acme" and record["key_id"] == "k1"
    await still_serves(stack)


async def test_a_500_before_admission_is_on_the_record(stack, monkeypatch) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(stack.governor, "admit", broken)
    body = json.dumps(CHAT).encode()
    answer = await exchange(stack.api, post("/v1/chat/completions", body, credentials(stack, "api")))
    assert answer.status == 500 and answer.error()["code"] == "internal_error"
    (record,) = stack.records(phase="refused", reason="internal_error")
    assert record["status"] == 500 and record["tenant"] == "acme"


async def test_failed_admin_logins_are_on_the_record(stack) -> None:
    for headers in ({}, {"authorization": "Bearer wrong", "x-forwarded-for": "203.0.113.7"}):
        answer = await exchange(stack.admin, request_head("GET", "/admin/v1/kills", headers))
        assert answer.status == 401 and answer.error()["code"] == "invalid_admin_token"
    answer = await exchange(stack.admin, request_head("GET", "/admin/v1/kills", credentials(stack, "admin")))
    assert answer.status == 200
    records = stack.records(event="admin", action="login_failed")
    assert [(r["target"], r["client"], r["actor"]) for r in records] == [
        ("GET /admin/v1/kills", "127.0.0.1", "unauthenticated")
    ] * 2


async def test_stopping_does_not_wait_for_a_stalled_body_and_keeps_what_was_admitted(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, DoorLimits(body_timeout_s=60.0))
    stack.engine.delay_s, stack.engine.words = 0.05, tuple(f"w{i}" for i in range(10))
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.api)
    head = {**credentials(stack, "api"), "content-type": "application/json", "content-length": "1000"}
    writer.write(request_head("POST", "/v1/chat/completions", head) + b'{"model": ')
    body = json.dumps(CHAT).encode()
    admitted = asyncio.create_task(exchange(stack.api, post("/v1/chat/completions", body, credentials(stack, "api"))))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await stack.stop()
    assert time.monotonic() - started < 5  # not the 60 s body timeout, nor http.stop's 10 s
    assert (await admitted).status == 200  # the admitted request was answered before the server stopped
    assert await reader.read() == b""  # the stalled one was let go
    writer.close()
    (gone,) = stack.records(phase="refused", reason="client_disconnected")
    assert gone["status"] == 499
