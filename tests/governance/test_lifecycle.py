"""One request's lifecycle in governance (service/governance/lifecycle.py): intake, ticket, kill, settlement.

A real Governor from the one builder, a node-local store and a real audit log; the request's "work" is a
plain coroutine, as the ingress's forward is one, watching the ticket's stop future as the relay does.
"""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import pytest
import yaml

from service.api.asgi import until_disconnect
from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.factory import build_governor
from service.governance.keys import hash_key, new_key
from service.governance.refusal import Refusal
from service.governance.store.base import Usage
from service.observability.metrics import ServiceMetrics
from service.protocol import errors
from service.protocol.routes import CHAT

CONFIG = parse_config(
    {"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 512}]}, "test"
)
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture
async def gov(tmp_path: Path):
    key, slow, one = new_key(), new_key(), new_key()
    tenants = [
        {"id": "acme", "models": ["*"], "keys": [{"id": "ka", "hash": hash_key(key)}]},
        {
            "id": "one",
            "models": ["*"],
            "limits": {"max_concurrent_requests": 1},
            "keys": [{"id": "k1", "hash": hash_key(one)}],
        },
        {
            "id": "slow",
            "models": ["*"],
            "parameters": {"request_timeout_s": 0.2},
            "keys": [{"id": "ks", "hash": hash_key(slow)}],
        },
    ]
    policy = tmp_path / "governance.yaml"
    policy.write_text(yaml.safe_dump({"tenants": tenants}))
    settings = Settings(state_dir=tmp_path, governance_file=policy, audit_stdout=False, admin_token="t")
    governor = build_governor(CONFIG, settings, ServiceMetrics(), kill_poll_s=0.05)
    await governor.start()
    yield governor, {"acme": key, "slow": slow, "one": one}, tmp_path / "audit"
    await governor.stop()


def records(audit_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in sorted(audit_dir.glob("*.jsonl")) for line in path.read_text().splitlines()]


async def admitted(governor, key: str, rid: str):
    async with governor.intake(rid, CHAT, "10.0.0.1") as intake:
        await intake.authenticate(f"Bearer {key}")
        return await intake.admit(intake.resolve("chat"), BODY)


async def test_refusals_inside_the_intake_are_on_record_with_their_reason(gov) -> None:
    governor, keys, audit = gov
    with pytest.raises(Refusal):
        async with governor.intake("r-auth", CHAT, "10.0.0.1") as intake:
            await intake.authenticate("Bearer pk-wrong")
    with pytest.raises(errors.APIError):
        async with governor.intake("r-big", CHAT, "10.0.0.1") as intake:
            await intake.authenticate(f"Bearer {keys['acme']}")
            raise errors.payload_too_large(10)  # found by the ingress, recorded by governance
    async with governor.intake("r-quiet", CHAT, "10.0.0.1") as intake:
        await intake.authenticate(f"Bearer {keys['acme']}")  # nothing refused, nothing recorded
    governor.trail.close()
    refused = {r["request_id"]: r for r in records(audit) if r.get("phase") == "refused"}
    assert set(refused) == {"r-auth", "r-big"}
    assert (refused["r-auth"]["reason"], refused["r-auth"]["status"], refused["r-auth"]["tenant"]) == (
        "invalid_api_key",
        401,
        None,
    )
    assert (refused["r-big"]["reason"], refused["r-big"]["status"], refused["r-big"]["tenant"]) == (
        "payload_too_large",
        413,
        "acme",
    )


async def test_a_ticket_runs_its_work_settles_on_usage_and_completes_its_record(gov) -> None:
    governor, keys, audit = gov
    ticket = await admitted(governor, keys["acme"], "r-ok")
    assert ticket in governor.active
    ran = []

    async def work() -> None:
        ran.append(True)

    await ticket.run(work())
    ticket.tap.usage = Usage(5, 7)  # as the usage tap reads it off the relayed response
    assert await ticket.close(200, response_started=True) == Usage(5, 7)
    assert ran == [True] and ticket.outcome == "ok" and ticket.settled and ticket not in governor.active
    governor.trail.close()
    phases = [
        (r["phase"], r.get("outcome"), r.get("charged_tokens")) for r in records(audit) if r.get("request_id") == "r-ok"
    ]
    assert phases == [("admitted", None, None), ("completed", "ok", 12)]


async def never_disconnects() -> dict[str, str]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def test_a_kill_ends_the_work_from_inside_and_never_cancels_the_request_task(gov) -> None:
    """The relay waits on the ticket's stop future beside the client's disconnect (``until_disconnect``, as
    ``service.api.upstream.relay`` does): the kill ends the work it runs, and the request's own task only
    ever sees the kill's refusal."""
    governor, keys, audit = gov
    ticket = await admitted(governor, keys["acme"], "r-kill")
    started, cancelled_in = asyncio.Event(), []

    async def relay_body() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_in.append(asyncio.current_task())
            raise

    seen_by_request: list[str] = []

    async def request() -> None:  # the request's own task, as the ASGI handler's is
        try:
            await ticket.run(until_disconnect(relay_body(), never_disconnects, ticket.stop))
        except asyncio.CancelledError:
            seen_by_request.append("cancelled")  # a kill delivered as a cancel of this task
            raise
        except Refusal as refusal:
            seen_by_request.append(f"{refusal.reason} {refusal.status} {refusal.code}")
        seen_by_request.append(f"cancelling={asyncio.current_task().cancelling()}")

    handler = asyncio.create_task(request())
    await started.wait()
    await governor.store.kill("tenant:acme", "test", "admin")  # the watcher delivers it within its poll
    await asyncio.wait_for(handler, 10)
    assert seen_by_request == ["killed 503 disabled_by_operator", "cancelling=0"]
    assert cancelled_in and cancelled_in[0] is not handler  # only the relay's own inner task was cancelled
    assert ticket.outcome == "killed" and ticket.killed_by == "tenant:acme"
    assert ticket.stop.result().headers["x-should-retry"] == "false"
    assert await ticket.close(503, response_started=False, reached_engine=True) is None  # the engine reported none
    governor.trail.close()
    completed = [r for r in records(audit) if r.get("request_id") == "r-kill" and r["phase"] == "completed"]
    assert [(r["outcome"], r["status"], r["charged_tokens"], r["charged_by"]) for r in completed] == [
        ("killed", 503, 0, "none")  # an operator's kill is never charged to the tenant
    ]


async def test_a_request_cancelled_from_outside_stays_cancelled(gov) -> None:
    """A server shutdown cancels the request's task: that is its outcome, and the cancel propagates."""
    governor, keys, _ = gov
    ticket = await admitted(governor, keys["acme"], "r-shutdown")
    started = asyncio.Event()

    async def relay_body() -> None:
        started.set()
        await asyncio.sleep(60)

    handler = asyncio.create_task(ticket.run(until_disconnect(relay_body(), never_disconnects, ticket.stop)))
    await started.wait()
    handler.cancel()
    done, _ = await asyncio.wait({handler}, timeout=10)
    assert done and handler.cancelled() and ticket.outcome == "cancelled"
    await ticket.close(499, response_started=False)


async def test_a_ticket_killed_before_it_runs_never_starts_its_work(gov) -> None:
    governor, keys, _ = gov
    ticket = await admitted(governor, keys["acme"], "r-early")
    ticket.kill("Paddock is disabled by its operators; do not retry.", "all")
    ran = []

    async def work() -> None:
        ran.append(True)

    with pytest.raises(Refusal):
        await ticket.run(work())
    assert ran == [] and ticket.outcome == "killed"
    await ticket.close(503, response_started=False)


async def test_the_tenant_time_limit_ends_the_work_with_504(gov) -> None:
    governor, keys, _ = gov
    ticket = await admitted(governor, keys["slow"], "r-slow")
    with pytest.raises(errors.APIError) as caught:
        await ticket.run(asyncio.sleep(30))
    assert (caught.value.status, caught.value.code, ticket.outcome) == (504, "timeout", "timeout")
    await ticket.close(504, response_started=False)


async def test_a_client_that_leaves_is_its_outcome_and_is_charged_its_reservation(gov) -> None:
    governor, keys, audit = gov
    ticket = await admitted(governor, keys["acme"], "r-gone")

    async def work() -> None:
        raise errors.Disconnected

    with pytest.raises(errors.Disconnected):
        await ticket.run(work())
    assert ticket.outcome == "client_disconnected"
    assert await ticket.close(499, response_started=True) is None  # a stream cut short: no usage seen
    governor.trail.close()
    completed = next(r for r in records(audit) if r.get("request_id") == "r-gone" and r["phase"] == "completed")
    assert completed["charged_tokens"] == ticket.reservation.tokens


def completed(audit: Path, rid: str) -> dict[str, object]:
    return next(r for r in records(audit) if r.get("request_id") == rid and r.get("phase") == "completed")


async def test_the_charge_follows_how_far_the_request_got(gov) -> None:
    """The engine's usage when it reported one; else the reservation (a response cut short), the reserved
    prompt (a replica had it: an upstream error, a timeout, a client gone before the response) or nothing."""
    governor, keys, audit = gov
    cases = {
        "r-usage": (Usage(5, 7), True, True, "ok"),
        "r-cut": (None, True, True, "client_disconnected"),
        "r-upstream-error": (None, False, True, "error"),
        "r-gone-early": (None, False, True, "client_disconnected"),
        "r-never-sent": (None, False, False, "error"),
        "r-killed": (None, False, True, "killed"),
    }
    tickets = {}
    for rid, (usage, started, reached, outcome) in cases.items():
        ticket = tickets[rid] = await admitted(governor, keys["acme"], rid)
        ticket.tap.usage, ticket.outcome = usage, outcome
        assert await ticket.close(502, response_started=started, reached_engine=reached) == usage
    governor.trail.close()
    charged = {rid: (completed(audit, rid)["charged_by"], completed(audit, rid)["charged_tokens"]) for rid in cases}
    ticket = tickets["r-usage"]
    assert ticket.shaped.prompt_tokens > 0
    assert charged == {
        "r-usage": ("usage", 12),
        "r-cut": ("reservation", ticket.reservation.tokens),
        "r-upstream-error": ("prompt", ticket.shaped.prompt_tokens),
        "r-gone-early": ("prompt", ticket.shaped.prompt_tokens),
        "r-never-sent": ("none", 0),
        "r-killed": ("none", 0),
    }
    assert completed(audit, "r-gone-early")["status"] == 499  # gone before the response: never a 5xx on record
    assert completed(audit, "r-upstream-error")["prompt_tokens"] is None  # what the engine reported: nothing
    rows = await governor.store.usage()
    assert sum(r.prompt_tokens for r in rows) == 5 + ticket.reservation.tokens + 2 * ticket.shaped.prompt_tokens


@pytest.mark.parametrize(
    ("error", "outcome", "status"),
    [
        (RuntimeError("a bug after admission"), "error", 500),
        (errors.invalid_request("late 400"), "error", 400),
        (asyncio.CancelledError(), "cancelled", 499),
        (errors.Disconnected(), "client_disconnected", 499),
    ],
)
async def test_a_request_that_fails_inside_the_intake_after_admission_is_closed_there(
    gov, error: BaseException, outcome: str, status: int
) -> None:
    governor, keys, audit = gov
    with pytest.raises(type(error)):
        async with governor.intake("r-bug", CHAT, "10.0.0.1") as intake:
            await intake.authenticate(f"Bearer {keys['one']}")
            await intake.admit(intake.resolve("chat"), BODY)
            raise error
    assert not governor.active
    second = await admitted(governor, keys["one"], "r-next")  # its one concurrency slot is free again
    await second.close(200, response_started=False)
    governor.trail.close()
    assert [r["phase"] for r in records(audit) if r.get("request_id") == "r-bug"] == ["admitted", "completed"]
    assert (completed(audit, "r-bug")["outcome"], completed(audit, "r-bug")["status"]) == (outcome, status)


async def test_an_intake_that_ends_normally_leaves_the_ticket_to_its_owner(gov) -> None:
    governor, keys, _ = gov
    async with governor.intake("r-owned", CHAT, "10.0.0.1") as intake:
        await intake.authenticate(f"Bearer {keys['acme']}")
        ticket = await intake.admit(intake.resolve("chat"), BODY)
    assert ticket in governor.active and not ticket.settled
    await ticket.close(200, response_started=False)


async def test_a_ticket_let_go_unsettled_is_settled_by_its_guard(gov) -> None:
    """Whatever path loses a ticket, its lease is neither renewed for ever nor left held: the governor holds
    tickets weakly, and the ticket's drop guard settles it (the whole reservation) and completes its record."""
    governor, keys, audit = gov
    principal = await governor.authenticate(f"Bearer {keys['one']}", "10.0.0.1")
    model = governor.resolve(principal, "chat")
    lost = await governor.admit(principal, model, CHAT, BODY, "r-lost", "10.0.0.1")
    reserved = lost.reservation.tokens
    with pytest.raises(Refusal):  # its slot is held
        await governor.admit(principal, model, CHAT, BODY, "r-refused", "10.0.0.1")
    del lost
    gc.collect()
    assert not governor.active  # no longer renewed
    for _ in range(100):
        await asyncio.sleep(0.01)
        if any(r.get("request_id") == "r-lost" and r.get("phase") == "completed" for r in records(audit)):
            break
    again = await governor.admit(principal, model, CHAT, BODY, "r-again", "10.0.0.1")  # released
    await governor.settle(again, Usage(1, 1))
    record = completed(audit, "r-lost")
    assert (record["outcome"], record["status"], record["charged_by"], record["charged_tokens"]) == (
        "error",
        500,
        "reservation",
        reserved,
    )


async def test_a_settled_ticket_disarms_its_guard(gov) -> None:
    governor, keys, audit = gov
    ticket = await admitted(governor, keys["acme"], "r-done")
    await ticket.close(200, response_started=False)
    del ticket
    gc.collect()
    await asyncio.sleep(0.05)
    governor.trail.close()
    assert [r["phase"] for r in records(audit) if r.get("request_id") == "r-done"] == ["admitted", "completed"]
