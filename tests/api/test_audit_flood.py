"""A keyless flood against a real ingress (issue 16, item 7): every request is counted in the metrics, but the
audit log gets O(1) records per window, with counts that add up to the flood; the aggregates are written at
shutdown, and the log verifies."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from service.config.settings import DoorLimits
from service.governance.audit import verify
from tests.api.front_door import CHAT, start_stack

FLOOD = 400


async def test_a_keyless_flood_writes_a_few_records_whose_counts_add_up(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, DoorLimits(), refusal_window_s=10.0)
    try:
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:
            for _ in range(FLOOD):
                async with session.post(f"http://127.0.0.1:{stack.api}/v1/chat/completions", json=CHAT) as answer:
                    statuses.append(answer.status)
        assert set(statuses) == {401, 429}  # missing keys, then the failed-authentication throttle
        assert len(stack.records(phase="refused")) == 2  # the first of each kind, at once
        decisions = stack.governor.trail.metrics.decisions
        counted = sum(decisions.labels("deny", r)._value.get() for r in ("missing_api_key", "auth_throttled"))
        assert counted == FLOOD  # the metrics see every refusal
    finally:
        await stack.stop()
    refused = stack.records(phase="refused")
    assert len(refused) == 4  # and one aggregate of each kind, written at shutdown
    assert sum(r["count"] for r in refused) == FLOOD
    assert {r["reason"]: r["count"] for r in refused if r.get("aggregated")} == {
        "missing_api_key": statuses.count(401) - 1,
        "auth_throttled": statuses.count(429) - 1,
    }
    files = sorted((tmp_path / "audit").glob("*.jsonl"))
    assert sum(f.stat().st_size for f in files) < 10_000  # one record per request would be about 200 KB
    assert verify([tmp_path / "audit"]) == []
    assert all(json.loads(line) for f in files for line in f.read_text().splitlines())
