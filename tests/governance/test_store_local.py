"""The node-local store's own guarantees: a killed process's slots lapse; counters survive a restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from service.governance.store.base import Quota, Reservation, Usage
from service.governance.store.local import LocalStore

CONC = Quota("max_concurrent_requests", "tenant:acme", 1)
DAY = Quota("tokens_per_day", "tenant:acme", 1000)

_HOLDER = """
import asyncio, sys, time
from pathlib import Path
from service.governance.store.base import Quota, Reservation
from service.governance.store.local import LocalStore

async def main():
    store = LocalStore(Path(sys.argv[1]))
    quotas = (Quota("max_concurrent_requests", "tenant:acme", 1), Quota("tokens_per_day", "tenant:acme", 1000))
    result = await store.admit(Reservation("r", "acme", "k", "m", 600, quotas), float(sys.argv[2]))
    print("admitted" if result.admitted else "refused", flush=True)
    time.sleep(60)

asyncio.run(main())
"""


def reservation(tokens: int) -> Reservation:
    return Reservation("r", "acme", "k", "m", tokens, (CONC, DAY))


async def test_a_process_killed_mid_request_loses_its_slot_after_the_lease_ttl(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), "1.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "admitted"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = LocalStore(path)
    refused = await store.admit(reservation(100), 30)
    assert not refused.admitted and refused.reason == "max_concurrent_requests"  # the slot is still leased
    await asyncio.sleep(1.2)
    admitted = await store.admit(reservation(600), 30)  # the slot and the 600 reserved tokens lapsed
    assert admitted.admitted
    await store.close()


async def test_budgets_survive_a_restart_and_a_clean_stop_releases_its_leases(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = LocalStore(path)
    first = await store.admit(reservation(500), 30)
    await store.settle(reservation(500), first.lease_id, Usage(300, 300))  # 600 used today
    held = await store.admit(reservation(300), 30)
    assert held.admitted
    await store.close()  # a clean stop: its lease is released at once
    store = LocalStore(path)
    assert (await store.admit(reservation(400), 30)).admitted  # 600 used + 400 = the budget
    assert not (await store.admit(Reservation("r", "acme", "k", "m", 1, (DAY,)), 30)).admitted
    await store.close()
