"""The state store's contract, run against every backend (see store/base.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from service.governance.store import open_store
from service.governance.store.base import Quota, Reservation, Usage


def reservation(tokens: int, *quotas: Quota, key: str = "k1", weight: int = 1) -> Reservation:
    return Reservation(
        request_id="r", tenant="acme", key_id=key, model="m", tokens=tokens, quotas=quotas, weight=weight
    )


async def test_requests_per_minute_bucket_and_headers(store) -> None:
    rpm = Quota("requests_per_minute", "tenant:acme", 3)
    results = [await store.admit(reservation(1, rpm), 30) for _ in range(4)]
    assert [r.admitted for r in results] == [True, True, True, False]
    assert [r.requests.remaining for r in results[:3]] == [2, 1, 0]
    assert results[3].reason == "requests_per_minute"
    assert 15 < results[3].retry_after_s <= 20  # one request refills in 60/3 s
    assert results[3].requests.limit == 3 and results[3].requests.reset_s > 50


async def test_tokens_per_minute_reserves_worst_case_and_refunds_on_settle(store) -> None:
    tpm = Quota("tokens_per_minute", "tenant:acme", 1000)
    first = await store.admit(reservation(400, tpm), 30)
    second = await store.admit(reservation(400, tpm), 30)
    third = await store.admit(reservation(400, tpm), 30)
    assert (first.admitted, second.admitted, third.admitted) == (True, True, False)
    # 200 left, plus the bucket's refill since (1000/60 tokens a second: a loaded machine adds some)
    assert third.reason == "tokens_per_minute" and 200 <= third.tokens.remaining < 400
    await store.settle(reservation(400, tpm), first.lease_id, Usage(50, 50))  # 300 back
    assert (await store.admit(reservation(400, tpm), 30)).admitted


async def test_a_request_larger_than_the_minute_limit_is_refused_for_good(store) -> None:
    denied = await store.admit(reservation(2000, Quota("tokens_per_minute", "tenant:acme", 1000)), 30)
    assert not denied.admitted and denied.reason == "tokens_per_minute" and denied.retry_after_s == 0


async def test_concurrency_slots_are_leases(store) -> None:
    conc = Quota("max_concurrent_requests", "tenant:acme", 2)
    first, second, third = [await store.admit(reservation(1, conc), 30) for _ in range(3)]
    assert (first.admitted, second.admitted, third.admitted) == (True, True, False)
    assert third.reason == "max_concurrent_requests"
    await store.settle(reservation(1, conc), first.lease_id, Usage(1, 0))
    assert (await store.admit(reservation(1, conc), 30)).admitted


async def test_a_batch_counts_its_weight_in_requests_and_concurrency_slots(store) -> None:
    rpm = Quota("requests_per_minute", "tenant:acme", 5)
    batch = await store.admit(reservation(1, rpm, weight=4), 30)
    assert batch.admitted and batch.requests.remaining == 1
    denied = await store.admit(reservation(1, rpm, weight=2), 30)
    assert not denied.admitted and denied.reason == "requests_per_minute" and denied.retry_after_s > 0
    never = await store.admit(reservation(1, Quota("requests_per_minute", "tenant:b", 5), weight=6), 30)
    assert not never.admitted and never.retry_after_s == 0  # more than the limit itself: waiting will not help
    conc = Quota("max_concurrent_requests", "tenant:c", 3)
    held = await store.admit(reservation(1, conc, weight=2), 30)
    assert held.admitted
    assert not (await store.admit(reservation(1, conc, weight=2), 30)).admitted  # 2 + 2 > 3
    single = await store.admit(reservation(1, conc), 30)
    assert single.admitted
    full = await store.admit(reservation(1, conc), 30)
    assert not full.admitted and full.reason == "max_concurrent_requests" and full.retry_after_s > 0
    too_big = await store.admit(reservation(1, conc, weight=4), 30)
    assert not too_big.admitted and too_big.reason == "max_concurrent_requests" and too_big.retry_after_s == 0
    await store.renew([held.lease_id], 30)  # renewal keeps every slot of the batch
    assert not (await store.admit(reservation(1, conc), 30)).admitted
    await store.settle(reservation(1, conc, weight=2), held.lease_id, Usage(1, 0))  # releases both
    assert (await store.admit(reservation(1, conc, weight=2), 30)).admitted


async def test_a_lapsed_batch_lease_releases_all_its_slots(store) -> None:
    conc = Quota("max_concurrent_requests", "tenant:acme", 3)
    assert (await store.admit(reservation(1, conc, weight=3), 0.2)).admitted
    assert not (await store.admit(reservation(1, conc), 0.2)).admitted
    await asyncio.sleep(0.4)
    await store.renew([], 0.2)
    assert (await store.admit(reservation(1, conc, weight=3), 0.2)).admitted


async def test_leases_of_a_dead_holder_expire_and_renewal_keeps_them(store) -> None:
    conc = Quota("max_concurrent_requests", "tenant:acme", 1)
    kept = await store.admit(reservation(1, conc, key="a"), 0.5)
    await asyncio.sleep(0.3)
    await store.renew([kept.lease_id], 0.5)
    await asyncio.sleep(0.3)
    assert not (await store.admit(reservation(1, conc), 0.5)).admitted  # renewed: still held
    await asyncio.sleep(0.6)  # its holder stopped renewing
    assert (await store.admit(reservation(1, conc), 0.5)).admitted


async def test_budgets_count_settled_tokens_and_live_reservations(store) -> None:
    day = Quota("tokens_per_day", "tenant:acme", 1000)
    month = Quota("tokens_per_month", "key:k1", 5000)
    first = await store.admit(reservation(600, day, month), 30)
    assert first.admitted
    denied = await store.admit(reservation(600, day, month), 30)
    assert not denied.admitted and denied.reason == "tokens_per_day"
    await store.settle(reservation(600, day, month), first.lease_id, Usage(60, 40))
    assert (await store.admit(reservation(600, day, month), 30)).admitted  # 100 used + 600 held
    assert not (await store.admit(reservation(301, day, month), 30)).admitted


async def test_a_lapsed_lease_releases_its_budget_reservation(store) -> None:
    day = Quota("tokens_per_day", "tenant:acme", 1000)
    assert (await store.admit(reservation(900, day), 1.0)).admitted  # a lease of 1 s: a loaded machine
    assert not (await store.admit(reservation(900, day), 1.0)).admitted  # still holds it here
    await asyncio.sleep(1.3)
    await store.renew([], 1.0)  # any renewal sweeps lapsed leases
    assert (await store.admit(reservation(900, day), 0.2)).admitted


async def test_settling_a_swept_lease_does_not_release_twice(store) -> None:
    day = Quota("tokens_per_day", "tenant:acme", 1000)
    lapsed = await store.admit(reservation(500, day), 0.1)
    await asyncio.sleep(0.3)
    await store.renew([], 30)
    held = await store.admit(reservation(500, day), 30)
    await store.settle(reservation(500, day), lapsed.lease_id, Usage(100, 0))
    # 100 used + 500 still held by `held`: another 500 would exceed 1000
    assert not (await store.admit(reservation(500, day), 30)).admitted
    assert held.admitted


async def test_kills_are_versioned_and_survive_a_restart(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url, tmp_path)
    start = await store.kill_version()
    state = await store.kill("model:m", "incident 42", "admin")
    assert state.version > start and state.scopes["model:m"]["reason"] == "incident 42"
    assert state.scopes["model:m"]["actor"] == "admin"
    await store.close()
    store = open_store(store_url, tmp_path)
    assert "model:m" in (await store.kills()).scopes
    revived = await store.revive("model:m", "admin")
    assert "model:m" not in revived.scopes and revived.version > state.version
    assert await store.kill_version() == revived.version
    await store.close()


async def test_usage_and_last_use_are_recorded_on_settle(store) -> None:
    before = time.time()
    admitted = await store.admit(reservation(100), 30)
    await store.settle(reservation(100), admitted.lease_id, Usage(7, 3))
    await store.settle(reservation(100), None, Usage(1, 2))
    rows = await store.usage()
    assert len(rows) == 1
    row = rows[0]
    assert (row.tenant, row.key_id, row.model, row.requests) == ("acme", "k1", "m", 2)
    assert (row.prompt_tokens, row.completion_tokens) == (8, 5)
    assert (await store.last_used())["k1"] >= before - 1
    assert await store.usage(since="2999-01-01") == []


async def test_hit_limits_per_name(store) -> None:
    waits = [await store.hit("authfail:10.0.0.1", 3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0
    assert await store.hit("authfail:10.0.0.2", 3) == 0.0


_WORKER = """
import asyncio, sys
from pathlib import Path
from service.governance.store import open_store
from service.governance.store.base import Quota, Reservation, Usage

async def main(url, state_dir):
    store = open_store(url, Path(state_dir))
    await store.kill_version()  # connected and warm
    print("ready", flush=True)
    sys.stdin.readline()  # both start together
    quota = Quota("tokens_per_day", "tenant:shared", 400)
    rpm = Quota("requests_per_minute", "tenant:shared", 100000)
    admitted = 0
    for _ in range(600):
        r = Reservation("r", "shared", "k", "m", 1, (quota, rpm))
        result = await store.admit(r, 30)
        if result.admitted:
            admitted += 1
            await store.settle(r, result.lease_id, Usage(1, 0))
    await store.close()
    print(admitted)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_two_processes_sharing_one_limit_admit_exactly_it(store_url: str, tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, store_url, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    counts = [int(worker.communicate(timeout=120)[0]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    assert abs(sum(counts) - 400) <= 20, counts  # within 5% (exact for these stores)
    assert all(count > 0 for count in counts), counts  # both really competed
