"""Repeated refusals as one audit record with a count (issue 16, item 7): a flood writes O(1) records per window,
the first of a burst at once, the rest at the window's end and at shutdown; metrics still count every refusal;
admitted requests are never aggregated."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.audit import AuditLog
from service.governance.audit_aggregate import RefusalAggregator
from service.governance.factory import build_governor
from service.governance.keys import hash_key, new_key
from service.governance.records import AuditTrail
from service.governance.refusal import Refusal
from service.governance.store.base import Usage
from service.observability.metrics import ServiceMetrics
from service.protocol.routes import CHAT

CONFIG = parse_config(
    {"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 512}]}, "test"
)
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """A writer that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def write(self, record: dict[str, Any], *, echo: bool = True) -> dict[str, Any]:
        self.records.append(dict(record))
        return record

    def close(self) -> None:
        self.closed = True


def refusal(i: int, client: str = "203.0.113.9", reason: str = "missing_api_key", **extra: object) -> dict[str, Any]:
    return {
        "time": f"2026-01-01T00:00:{i % 60:02d}.000Z",
        "event": "request",
        "phase": "refused",
        "request_id": f"r{i}",
        "trace_id": None,
        "route": "/v1/chat/completions",
        "client": client,
        "tenant": None,
        "key_id": None,
        "model": None,
        "reason": reason,
        "detail": None,
        "status": 401,
        "latency_s": 0.001,
        **extra,
    }


def test_a_flood_is_its_first_record_at_once_then_one_record_per_window(tmp_path: Path) -> None:
    clock, sink = Clock(), Sink()
    refusals = RefusalAggregator(10.0, sink.write, clock=clock)
    refusals.offer(refusal(0))
    assert [r["request_id"] for r in sink.records] == ["r0"] and sink.records[0]["count"] == 1  # seen at once
    for i in range(1, 5000):  # 5000 refusals over 25 s, as fast as a keyless client sends them
        clock.now = 1000.0 + i * 0.005
        refusals.offer(refusal(i))
        refusals.flush_due()  # (the governor's flusher, every second)
    refusals.flush()  # shutdown
    assert len(sink.records) <= 1 + 3  # the first, then one per 10 s window
    assert sum(r["count"] for r in sink.records) == 5000
    aggregate = sink.records[1]
    assert aggregate["aggregated"] is True and aggregate["window_s"] == 10.0
    assert (aggregate["request_id"], aggregate["first_time"]) == ("r1", "2026-01-01T00:00:01.000Z")
    assert aggregate["count"] == 1999 and aggregate["last_request_id"] == "r1999"
    assert {"time", "latency_s", "trace_id"}.isdisjoint(aggregate)  # the writer stamps the time it is written
    assert (aggregate["reason"], aggregate["status"], aggregate["client"]) == ("missing_api_key", 401, "203.0.113.9")


def test_different_refusals_are_not_merged_and_a_burst_that_stops_leaves_nothing_pending() -> None:
    clock, sink = Clock(), Sink()
    refusals = RefusalAggregator(10.0, sink.write, clock=clock)
    refusals.offer(refusal(0))
    refusals.offer(refusal(1, client="198.51.100.7"))  # another address
    refusals.offer(refusal(2, reason="invalid_api_key"))  # another reason
    refusals.offer(refusal(3, key_id="k1", tenant="acme", reason="rate_limited", status=429, detail="rpm"))
    refusals.offer(refusal(4, route="/v1/embeddings"))  # another route
    assert [r["request_id"] for r in sink.records] == ["r0", "r1", "r2", "r3", "r4"]
    refusals.offer(refusal(5))
    assert refusals.pending == 1
    clock.now += 10
    assert refusals.flush_due() == 1 and sink.records[-1]["count"] == 1 and refusals.pending == 0
    clock.now += 10  # a quiet window: the burst is over
    assert refusals.flush_due() == 0
    refusals.offer(refusal(6))
    assert sink.records[-1]["request_id"] == "r6" and sink.records[-1]["count"] == 1  # a new burst: at once


def test_a_window_over_is_closed_by_the_next_refusal_even_before_the_flusher_comes() -> None:
    clock, sink = Clock(), Sink()
    refusals = RefusalAggregator(10.0, sink.write, clock=clock)
    for i in range(3):
        refusals.offer(refusal(i))
    clock.now += 11
    refusals.offer(refusal(3))
    assert [r["count"] for r in sink.records] == [1, 2]  # the first, then the window's aggregate
    assert refusals.pending == 1


def test_too_many_kinds_at_once_fold_into_an_overflow_record_with_the_exact_count() -> None:
    clock, sink = Clock(), Sink()
    refusals = RefusalAggregator(10.0, sink.write, clock=clock, max_keys=50)
    for i in range(10_000):  # 10,000 addresses, one refusal each
        refusals.offer(refusal(i, client=f"2001:db8::{i:x}"))
    refusals.flush()
    assert len(sink.records) <= 50 + 2
    assert sum(r["count"] for r in sink.records) == 10_000
    overflow = [r for r in sink.records if r.get("overflow")]
    assert overflow and all(r["client"] is None for r in overflow)


def test_window_zero_writes_every_refusal() -> None:
    sink = Sink()
    refusals = RefusalAggregator(0.0, sink.write)
    for i in range(5):
        refusals.offer(refusal(i))
    assert [r["count"] for r in sink.records] == [1] * 5 and refusals.pending == 0


def trail_refuse(trail: AuditTrail, i: int) -> None:
    trail.refused(
        request_id=f"r{i}",
        route="/v1/chat/completions",
        client="203.0.113.9",
        reason="missing_api_key",
        detail=None,
        status=401,
        started=time.monotonic(),
    )


def test_the_trail_counts_every_refusal_in_metrics_and_flushes_at_close(tmp_path: Path) -> None:
    clock, metrics = Clock(), ServiceMetrics()
    log = AuditLog(tmp_path, writer_id="w")
    trail = AuditTrail(log, metrics, refusal_window_s=10.0, clock=clock)
    for i in range(500):
        trail_refuse(trail, i)
    assert metrics.decisions.labels("deny", "missing_api_key")._value.get() == 500  # every one, at once
    refused = [json.loads(line) for line in log.path.read_text().splitlines() if '"refused"' in line]
    assert len(refused) == 1  # the first; the rest wait for the window's end
    trail.close()  # shutdown: the pending aggregate is written before the chain closes
    chain = [json.loads(line) for line in log.path.read_text().splitlines()]
    refused = [r for r in chain if r.get("phase") == "refused"]
    assert [r["count"] for r in refused] == [1, 499] and chain[-1]["event"] == "chain.end"


def test_admitted_requests_are_never_aggregated() -> None:
    sink, metrics = Sink(), ServiceMetrics()
    trail = AuditTrail(sink, metrics, refusal_window_s=10.0, clock=Clock())
    principal = SimpleNamespace(tenant=SimpleNamespace(id="acme", audit=SimpleNamespace(include_text=False)))
    principal.key = SimpleNamespace(id="k1")
    for i in range(3):
        ticket = SimpleNamespace(
            principal=principal,
            shaped=SimpleNamespace(stream=False, body={}),
            request_id=f"a{i}",
            route="/v1/chat/completions",
            client="203.0.113.9",
            model=SimpleNamespace(id="chat"),
            artifact=None,
            reservation=SimpleNamespace(tokens=5),
            started=time.monotonic(),
            killed_by=None,
        )
        trail.admitted(ticket)
        trail.completed(ticket, status=200, usage=Usage(1, 1), outcome="ok")
    assert [(r["request_id"], r["phase"]) for r in sink.records] == [
        (f"a{i}", phase) for i in range(3) for phase in ("admitted", "completed")
    ]
    assert all("count" not in r for r in sink.records)


@pytest.fixture
async def governor(tmp_path: Path):
    key = new_key()
    policy = tmp_path / "governance.yaml"
    tenants = [{"id": "acme", "models": ["*"], "keys": [{"id": "ka", "hash": hash_key(key)}]}]
    policy.write_text(yaml.safe_dump({"tenants": tenants}))
    settings = Settings(
        state_dir=tmp_path, governance_file=policy, audit_stdout=False, admin_token="t", audit_refusal_window_s=0.3
    )
    governor = build_governor(CONFIG, settings, ServiceMetrics(), auth_failures_per_minute=1000)
    await governor.start()
    yield governor, key, tmp_path / "audit"
    await governor.stop()


def audit(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_text().splitlines()]


async def test_the_governor_flushes_a_window_when_it_ends(governor) -> None:
    governor, key, directory = governor
    for i in range(40):
        with pytest.raises(Refusal):
            async with governor.intake(f"r{i}", CHAT, "10.0.0.1") as intake:
                await intake.authenticate("Bearer pk-wrong")
    async with governor.intake("ok", CHAT, "10.0.0.1") as intake:
        await intake.authenticate(f"Bearer {key}")
        ticket = await intake.admit(intake.resolve("chat"), BODY)
        await ticket.close(200, response_started=True)
    assert [r["count"] for r in audit(directory) if r.get("phase") == "refused"] == [1]
    deadline = time.monotonic() + 5
    while sum(r.get("count", 0) for r in audit(directory) if r.get("phase") == "refused") < 40:
        assert time.monotonic() < deadline, "the window's aggregate was not written"
        await asyncio.sleep(0.05)
    refused = [r for r in audit(directory) if r.get("phase") == "refused"]
    assert [r["count"] for r in refused] == [1, 39] and refused[1]["reason"] == "invalid_api_key"
    assert [r["request_id"] for r in audit(directory) if r.get("phase") in ("admitted", "completed")] == ["ok", "ok"]
