"""The replica registry and each ingress's local view of it."""

from __future__ import annotations

import asyncio
from typing import Any

from service.serve.registry import ENTRY_TTL_S, Announcement, RegistryDirectory, RegistryState


def test_heartbeats_expire_and_versions_change_only_on_membership() -> None:
    state = RegistryState(ttl_s=5)
    a = Announcement("chat", "r1", "http://127.0.0.1:1")
    state.heartbeat(a, now=0)
    first = state.snapshot(now=1)
    assert first["models"] == {"chat": [{"replica_id": "r1", "url": "http://127.0.0.1:1", "artifact": ""}]}
    state.heartbeat(a, now=2)
    assert state.snapshot(now=3)["version"] == first["version"]  # same member: no churn for ingresses
    state.heartbeat(Announcement("chat", "r2", "http://127.0.0.1:2"), now=3)
    assert state.snapshot(now=4)["version"] != first["version"]
    later = state.snapshot(now=7.5)  # r1 last seen at 2, r2 at 3
    assert [e["replica_id"] for e in later["models"]["chat"]] == ["r2"]
    state.remove("r2")
    assert state.snapshot(now=8)["models"] == {}


class _Remote:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self._fn(*args)

        return call()


class FakeRegistryHandle:
    """Stands in for the Ray deployment handle: same method shape, a real RegistryState behind it."""

    def __init__(self, state: RegistryState) -> None:
        self.snapshot = _Remote(lambda known_version="", wait_s=0.0: state.snapshot())


class FakeModelHandle:
    def __init__(self, state: RegistryState) -> None:
        def wake() -> str:
            state.heartbeat(Announcement("cold", "r9", "http://127.0.0.1:9"))
            return "http://127.0.0.1:9"

        self.wait_ready = _Remote(wake)


async def test_directory_tracks_registry_and_skips_unreachable() -> None:
    state = RegistryState()
    state.heartbeat(Announcement("chat", "r1", "http://127.0.0.1:1"))
    state.heartbeat(Announcement("chat", "r2", "http://127.0.0.1:2"))
    directory = RegistryDirectory(FakeRegistryHandle(state), {"cold": FakeModelHandle(state)})
    assert not directory.ready
    await directory.refresh()
    assert directory.ready
    r1, r2 = directory.endpoints("chat")
    r1.inflight = 3
    state.heartbeat(Announcement("chat", "r3", "http://127.0.0.1:3"))
    await directory.refresh()
    kept = {e.replica_id: e for e in directory.endpoints("chat")}
    assert set(kept) == {"r1", "r2", "r3"} and kept["r1"].inflight == 3  # same objects keep counts
    directory.report_unreachable("chat", kept["r2"])
    assert {e.replica_id for e in directory.endpoints("chat")} == {"r1", "r3"}
    await directory.refresh()  # the registry still lists r2: the exclusion holds for the TTL
    assert "r2" not in {e.replica_id for e in directory.endpoints("chat")}
    assert ENTRY_TTL_S > 0


async def test_wake_scales_from_zero_and_waits_for_the_announcement() -> None:
    state = RegistryState()
    directory = RegistryDirectory(FakeRegistryHandle(state), {"cold": FakeModelHandle(state)})
    await directory.refresh()
    assert not directory.endpoints("cold")
    endpoints = await asyncio.wait_for(directory.wake("cold", timeout_s=5), 5)
    assert [e.url for e in endpoints] == ["http://127.0.0.1:9"]


async def test_directory_knows_the_artifact_each_replica_verified() -> None:
    """Replicas announce the manifest digest they verified: the ingress's audit records name it."""
    state = RegistryState()
    digest, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    state.heartbeat(Announcement("chat", "r1", "http://127.0.0.1:1", digest))
    state.heartbeat(Announcement("chat", "r2", "http://127.0.0.1:2", digest))
    state.heartbeat(Announcement("free", "r3", "http://127.0.0.1:3"))  # approval off: nothing verified
    directory = RegistryDirectory(FakeRegistryHandle(state), {})
    await directory.refresh()
    assert {e.artifact for e in directory.endpoints("chat")} == {digest}
    assert directory.artifact("chat") == digest
    assert directory.artifact("free") is None and directory.artifact("absent") is None
    state.heartbeat(Announcement("chat", "r4", "http://127.0.0.1:4", other))  # a new approval rolling out
    await directory.refresh()
    assert directory.artifact("chat") is None  # replicas disagree: only each completed record can tell
    assert {e.replica_id: e.artifact for e in directory.endpoints("chat")}["r4"] == other


# The drain: paddock serve sets it on the registry, each ingress sees it and reports what it still has in flight.


def test_drain_changes_the_version_once_and_is_in_every_snapshot() -> None:
    state = RegistryState()
    before = state.snapshot()
    assert before["draining"] is False
    state.drain()
    after = state.snapshot()
    assert after["draining"] is True and after["version"] != before["version"]  # long polls answer at once
    state.drain()
    assert state.snapshot()["version"] == after["version"]


def test_drain_status_counts_live_ingresses_and_their_requests() -> None:
    state = RegistryState(ttl_s=5.0)
    assert state.drain_status(now=100.0) == {"ingresses": 0, "inflight": 0}
    state.report_ingress("i1", 3, now=100.0)
    state.report_ingress("i2", 1, now=101.0)
    assert state.drain_status(now=102.0) == {"ingresses": 2, "inflight": 4}
    state.report_ingress("i1", 0, now=103.0)  # the latest report replaces the earlier one
    assert state.drain_status(now=103.0) == {"ingresses": 2, "inflight": 1}
    assert state.drain_status(now=106.5) == {"ingresses": 1, "inflight": 0}  # i2 went silent: it is gone


async def test_the_directory_learns_of_the_drain() -> None:
    state = RegistryState()
    directory = RegistryDirectory(FakeRegistryHandle(state), {})
    await directory.refresh()
    assert not directory.drain_requested.is_set()
    state.drain()
    await directory.refresh()
    assert directory.drain_requested.is_set()
