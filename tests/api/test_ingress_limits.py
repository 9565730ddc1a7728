"""Hostile clients against a real governed ingress on a socket: the failed-auth throttle, batches, leases that
must not leak, clients that leave before their response, replicas that hang or fail, and what each is charged.

A real Governor (node-local store, audit log) behind the ingress, served by the service's own runner; a
stand-in model replica (aiohttp) that answers like vLLM with usage, and notices when its request is cancelled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict

from harness.ports import free_port
from harness.standins import OneReplicaDirectory, serve, serve_handler
from service.api import ingress as ingress_module
from service.api.ingress import IngressApp
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.config.schema import IngressConfig
from service.config.settings import Settings
from service.governance.factory import build_governor
from service.governance.keys import hash_key, new_key
from service.governance.store import open_store
from service.observability.metrics import ServiceMetrics

TOKEN = "internal"
CONFIG = parse_config(
    {"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 1000}]},
    "test",
)
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


class Replica:
    """Answers with usage like vLLM. ``metadata`` (chat) or ``user`` (completions) steer it: ``delay`` seconds
    before the answer, ``fail`` an error status instead of one, ``die_mid_stream`` a stream cut after its first
    event. It counts the requests it saw and the ones
    cancelled under it (the ingress closed the connection: what makes a real replica abort the engine)."""

    def __init__(self) -> None:
        self.requests = 0
        self.cancelled = 0
        self.started = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        self.started.set()
        steer = body.get("metadata") or json.loads(body.get("user") or "{}")
        try:
            await asyncio.sleep(float(steer.get("delay", 0)))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if steer.get("die_mid_stream"):  # a replica that dies after the 200: one event, then the connection drops
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "Pa"}}]}\n\n')
            await asyncio.sleep(0.2)  # the event reaches the ingress before the connection drops
            assert request.transport is not None
            request.transport.abort()
            return response
        if "fail" in steer:
            status = int(steer["fail"])
            error = {"error": {"message": "engine failed", "type": "server_error", "param": None, "code": None}}
            return web.json_response(error, status=status)
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        return web.json_response({"choices": [{"index": 0, "text": "Paris"}], "usage": usage})


class Stack:
    def __init__(self, tmp_path: Path, keys: dict[str, str], replica: Replica, governor: Any, upstream: Any) -> None:
        self.tmp_path, self.keys, self.replica, self.governor, self._upstream = (
            tmp_path,
            keys,
            replica,
            governor,
            upstream,
        )
        self.base = ""
        self._served: list[Any] = []

    async def ingress(self, directory: Any = None, upstream: Upstream | None = None) -> str:
        """Serve another ingress app on this governor (its own directory or upstream client)."""
        directory = directory or OneReplicaDirectory(Endpoint(self._upstream.url, "r"))
        app = IngressApp(CONFIG, directory, upstream or Upstream(TOKEN), self.governor, metrics=ServiceMetrics())
        served = await serve(app)
        self._served.append(served)
        return served.url

    def audit(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for path in sorted((self.tmp_path / "audit").glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]

    def completed(self, rid: str) -> dict[str, Any]:
        return next(r for r in self.audit() if r.get("request_id") == rid and r.get("phase") == "completed")

    async def stop(self) -> None:
        for served in self._served:
            await served.stop()


@pytest.fixture
async def stack(tmp_path: Path):
    keys = {name: new_key() for name in ("wide", "rated", "pool", "solo")}
    tenants = [
        {"id": "wide", "models": ["*"], "keys": [{"id": "kw", "hash": hash_key(keys["wide"])}]},
        {
            "id": "rated",
            "models": ["*"],
            "limits": {"requests_per_minute": 5},
            "parameters": {"max_batch": 8},
            "keys": [{"id": "kr", "hash": hash_key(keys["rated"])}],
        },
        {
            "id": "pool",
            "models": ["*"],
            "limits": {"max_concurrent_requests": 3},
            "parameters": {"max_batch": 8},
            "keys": [{"id": "kp", "hash": hash_key(keys["pool"])}],
        },
        {
            "id": "solo",
            "models": ["*"],
            "limits": {"max_concurrent_requests": 1},
            "keys": [{"id": "ks", "hash": hash_key(keys["solo"])}],
        },
    ]
    policy = tmp_path / "governance.yaml"
    policy.write_text(yaml.safe_dump({"tenants": tenants}))
    replica = Replica()
    upstream = await serve_handler(replica.handle, handler_cancellation=True)
    settings = Settings(state_dir=tmp_path, governance_file=policy, audit_stdout=False, admin_token="t")
    governor = build_governor(CONFIG, settings, ServiceMetrics(), auth_failures_per_minute=3, lease_ttl_s=3)
    await governor.start()
    built = Stack(tmp_path, keys, replica, governor, upstream)
    built.base = await built.ingress()
    yield built
    await built.stop()
    await governor.stop()
    await upstream.stop()


async def post(
    base: str, key: str | None, body: dict[str, Any], path: str = CHAT_PATH, rid: str | None = None
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if rid:
        headers["x-request-id"] = rid
    async with aiohttp.ClientSession() as session:
        async with session.post(base + path, json=body, headers=headers) as response:
            return response.status, CIMultiDict(response.headers), await response.json(content_type=None)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def completion(prompts: int, **steer: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "chat", "prompt": ["say hi"] * prompts, "max_tokens": 5}
    if steer:
        body["user"] = json.dumps(steer)
    return body


# -- the failed-authentication throttle ---------------------------------------------------------------------


async def test_a_throttled_address_still_serves_every_valid_key(stack: Stack) -> None:
    """Behind a proxy every client has one address: guesses lock out further guesses, never a tenant."""
    statuses = [(await post(stack.base, f"pk-guess-{i}", CHAT))[0] for i in range(3)]
    assert statuses == [401, 401, 401]
    status, headers, body = await post(stack.base, "pk-guess-4", CHAT)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1
    assert (await post(stack.base, None, CHAT))[0] == 429  # no key at all is a failure too
    for tenant in ("wide", "rated", "solo"):
        assert (await post(stack.base, stack.keys[tenant], CHAT))[0] == 200, tenant


async def test_the_throttle_stays_on_while_the_store_is_down(stack: Stack) -> None:
    real = stack.governor.store
    stack.governor.store = open_store(f"redis://127.0.0.1:{free_port()}/0", Path("/nonexistent"))  # nobody listens
    try:
        statuses = [(await post(stack.base, f"pk-guess-{i}", CHAT))[0] for i in range(4)]
        valid, _, body = await post(stack.base, stack.keys["wide"], CHAT)
    finally:
        await stack.governor.store.close()
        stack.governor.store = real
    assert statuses == [401, 401, 401, 429]  # counted in the process meanwhile
    assert valid == 503 and body["error"]["code"] == "governance_unavailable"  # fail-closed: limits unknown
    assert stack.governor.trail.metrics.store_errors.labels("auth")._value.get() == 4


# -- batches ------------------------------------------------------------------------------------------------


async def test_a_batch_of_256_prompts_is_refused_by_max_batch(stack: Stack) -> None:
    status, _, body = await post(stack.base, stack.keys["wide"], completion(256), COMPLETIONS_PATH)
    assert status == 400 and (body["error"]["code"], body["error"]["param"]) == ("invalid_value", "prompt")
    assert "holds 256 prompts but this key allows at most 32" in body["error"]["message"]
    assert (await post(stack.base, stack.keys["rated"], completion(9), COMPLETIONS_PATH))[0] == 400  # its own 8
    assert stack.replica.requests == 0


async def test_a_batch_counts_as_one_request_per_prompt_for_the_rate_limit(stack: Stack) -> None:
    status, headers, _ = await post(stack.base, stack.keys["rated"], completion(4), COMPLETIONS_PATH)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "1"  # 5 - 4
    status, headers, body = await post(stack.base, stack.keys["rated"], completion(2), COMPLETIONS_PATH)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and "retry-after" in headers
    assert (await post(stack.base, stack.keys["rated"], completion(1), COMPLETIONS_PATH))[0] == 200


async def test_a_batch_holds_one_concurrency_slot_per_prompt(stack: Stack) -> None:
    key = stack.keys["pool"]  # 3 concurrent requests
    slow = asyncio.create_task(post(stack.base, key, completion(2, delay=1.5), COMPLETIONS_PATH))
    await stack.replica.started.wait()
    status, _, body = await post(stack.base, key, completion(2), COMPLETIONS_PATH)
    assert status == 429 and "max concurrent requests" in body["error"]["message"]
    assert (await post(stack.base, key, completion(1), COMPLETIONS_PATH))[0] == 200  # the third slot
    status, headers, body = await post(stack.base, key, completion(4), COMPLETIONS_PATH)
    assert status == 429 and headers["x-should-retry"] == "false" and "send fewer prompts" in body["error"]["message"]
    assert (await slow)[0] == 200
    assert (await post(stack.base, key, completion(3), COMPLETIONS_PATH))[0] == 200  # every slot back


# -- leases that must not leak ------------------------------------------------------------------------------


async def test_a_failure_after_admission_releases_the_lease(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug between admission and the relay: the request is answered 500 and its slot is free at once."""
    key = stack.keys["solo"]  # one concurrent request

    def broken(*_args: Any, **_kw: Any) -> None:
        raise RuntimeError("a bug after admission")

    monkeypatch.setattr(stack.governor.trail, "admitted", broken)
    assert (await post(stack.base, key, CHAT, rid="r-bug-1"))[0] == 500
    monkeypatch.undo()
    monkeypatch.setattr(ingress_module, "RelayState", broken)  # fails in _governed, before its try
    assert (await post(stack.base, key, CHAT, rid="r-bug-2"))[0] == 500
    monkeypatch.undo()
    assert not stack.governor.active
    assert (await post(stack.base, key, CHAT))[0] == 200  # the one slot was released both times
    for rid in ("r-bug-1", "r-bug-2"):
        record = stack.completed(rid)
        assert (record["outcome"], record["status"], record["charged_tokens"]) == ("error", 500, 0)


# -- clients that leave before their response ---------------------------------------------------------------


async def test_a_client_that_leaves_a_non_streamed_request_releases_it_and_aborts_the_engine(stack: Stack) -> None:
    key = stack.keys["solo"]
    call = asyncio.create_task(post(stack.base, key, {**CHAT, "metadata": {"delay": "30"}}, rid="r-gone"))
    await stack.replica.started.wait()
    call.cancel()  # the client closes its connection while the replica is still generating
    await eventually(lambda: stack.replica.cancelled == 1)  # the replica's request was cut: the engine aborts
    await eventually(lambda: not stack.governor.active)
    assert (await post(stack.base, key, CHAT))[0] == 200  # its slot is free
    record = stack.completed("r-gone")
    assert (record["outcome"], record["status"], record["charged_by"]) == ("client_disconnected", 499, "prompt")
    assert (
        0
        < record["charged_tokens"]
        < next(
            r["reserved_tokens"] for r in stack.audit() if r.get("request_id") == "r-gone" and r["phase"] == "admitted"
        )
    )


class Asleep:
    """A model scaled to zero whose replica never comes up."""

    ready = True

    def __init__(self) -> None:
        self.waking = asyncio.Event()
        self.woken_cancelled = False

    def endpoints(self, model_id: str) -> list[Endpoint]:
        return []

    async def wake(self, model_id: str, timeout_s: float) -> list[Endpoint]:
        self.waking.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.woken_cancelled = True
            raise
        return []

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None:
        pass


async def test_a_client_that_leaves_while_its_model_wakes_releases_its_lease(stack: Stack) -> None:
    directory = Asleep()
    base = await stack.ingress(directory)
    call = asyncio.create_task(post(base, stack.keys["solo"], CHAT, rid="r-waiting"))
    await directory.waking.wait()
    call.cancel()
    await eventually(lambda: directory.woken_cancelled and not stack.governor.active)
    assert (await post(stack.base, stack.keys["solo"], CHAT))[0] == 200
    record = stack.completed("r-waiting")
    assert (record["outcome"], record["status"], record["charged_by"], record["charged_tokens"]) == (
        "client_disconnected",
        499,
        "none",  # no replica had it
        0,
    )


# -- replicas that hang or fail -----------------------------------------------------------------------------


def test_the_upstream_read_timeout_is_a_typed_setting_with_a_default() -> None:
    assert IngressConfig().upstream_read_timeout_s == 300.0
    assert IngressConfig(upstream_read_timeout_s=20).upstream_read_timeout_s == 20.0
    with pytest.raises(ValueError):
        IngressConfig(upstream_read_timeout_s=0)
    assert Upstream(TOKEN).read_timeout_s == 300.0


class TwoReplicas(OneReplicaDirectory):
    """Two replica ids at one address: a retry would reach the stand-in replica a second time."""

    def endpoints(self, model_id: str) -> list[Endpoint]:
        return [self.endpoint, Endpoint(self.endpoint.url, "r2")]


async def test_a_replica_that_sends_nothing_is_given_up_on_with_a_504_and_no_retry(stack: Stack) -> None:
    directory = TwoReplicas(Endpoint(stack._upstream.url, "r1"))
    base = await stack.ingress(directory, Upstream(TOKEN, read_timeout_s=0.5))
    started = asyncio.get_running_loop().time()
    status, _, body = await post(base, stack.keys["solo"], {**CHAT, "metadata": {"delay": "30"}}, rid="r-hung")
    assert (
        status == 504
        and body["error"]["code"] == "timeout"
        and "sent no response within 0.5 s" in (body["error"]["message"])
    )
    assert asyncio.get_running_loop().time() - started < 5
    await eventually(lambda: stack.replica.cancelled == 1)  # its connection was closed: the engine aborts
    assert stack.replica.requests == 1  # never retried on another replica: the first one had it
    record = stack.completed("r-hung")
    assert (record["outcome"], record["status"], record["charged_by"]) == ("error", 504, "prompt")
    assert (await post(stack.base, stack.keys["solo"], CHAT))[0] == 200


async def test_a_stream_the_replica_cut_ends_in_band_and_is_recorded_as_an_error(stack: Stack) -> None:
    """The 200 went out, then the replica died (a lost node): the client gets an error event and [DONE], and
    the audit record says `error`, not `ok` (it said ok, with status 200, before)."""
    body = {**CHAT, "stream": True, "metadata": {"die_mid_stream": "1"}}
    headers = {"authorization": f"Bearer {stack.keys['solo']}", "x-request-id": "r-cut"}
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.base + CHAT_PATH, json=body, headers=headers) as response:
            assert response.status == 200
            events = [line for line in (await response.text()).splitlines() if line.startswith("data:")]
    assert events[0].endswith('"Pa"}}]}') and '"error"' in events[-2] and events[-1] == "data: [DONE]", events
    record = stack.completed("r-cut")
    assert (record["outcome"], record["status"]) == ("error", 200)
    assert not stack.governor.active  # its lease was released
    assert (await post(stack.base, stack.keys["solo"], CHAT))[0] == 200


@pytest.mark.parametrize(("fail", "charged_by"), [(500, "prompt"), (400, "prompt"), (503, "none")])
async def test_an_upstream_error_is_charged_the_reserved_prompt_unless_refused_unprocessed(
    stack: Stack, fail: int, charged_by: str
) -> None:
    status, _, _ = await post(stack.base, stack.keys["wide"], {**CHAT, "metadata": {"fail": str(fail)}}, rid="r-err")
    assert status == fail
    record = stack.completed("r-err")
    assert (record["status"], record["charged_by"], record["prompt_tokens"]) == (fail, charged_by, None)
    rows = await stack.governor.store.usage()
    assert sum(r.prompt_tokens for r in rows) == record["charged_tokens"]
    assert (record["charged_tokens"] > 0) == (charged_by == "prompt")
