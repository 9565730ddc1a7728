"""Which replica of which model listens where.

Model replicas run their own HTTP servers; they announce themselves to the
:class:`Registry` deployment with a heartbeat, and every ingress replica keeps
a local :class:`RegistryDirectory` copy of the table, refreshed in the
background, so that routing a request costs no Ray call. A replica that stops
heartbeating drops out after ``ttl_s``; an ingress that cannot reach a replica
stops using it at once.

The registry also carries the service's drain: ``paddock serve``, told to stop,
sets it (:meth:`RegistryState.drain`); every ingress sees it in its next answer,
refuses new requests from then on, and reports its in-flight count back
(:meth:`RegistryState.report_ingress`) until the driver sees none left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.api.upstream import Endpoint

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.5
ENTRY_TTL_S = 5.0


@dataclass(frozen=True)
class Announcement:
    model_id: str
    replica_id: str
    url: str
    artifact: str = ""  # the manifest digest of the model files it verified (models/approval.py); "": not checked


class RegistryState:
    """The registry's table (plain Python; the deployment wraps it)."""

    def __init__(self, ttl_s: float = ENTRY_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[Announcement, float]] = {}
        self._epoch = uuid.uuid4().hex[:12]  # a restarted registry never repeats a version
        self._version = 0
        self.draining = False
        self._ingresses: dict[str, tuple[int, float]] = {}  # while draining: ingress id -> (in flight, when)

    def heartbeat(self, announcement: Announcement, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        known = self._entries.get(announcement.replica_id)
        if known is None or known[0] != announcement:
            self._version += 1
        self._entries[announcement.replica_id] = (announcement, now)

    def remove(self, replica_id: str) -> None:
        if self._entries.pop(replica_id, None) is not None:
            self._version += 1

    def drain(self) -> None:
        """From now on every ingress refuses new requests (its next snapshot says so)."""
        if not self.draining:
            self.draining = True
            self._version += 1

    def report_ingress(self, ingress_id: str, inflight: int, now: float | None = None) -> None:
        self._ingresses[ingress_id] = (inflight, time.monotonic() if now is None else now)

    def drain_status(self, now: float | None = None) -> dict[str, int]:
        """How many ingresses reported within ``ttl_s`` while draining, and their requests still in flight."""
        now = time.monotonic() if now is None else now
        live = [inflight for inflight, seen in self._ingresses.values() if now - seen <= self._ttl_s]
        return {"ingresses": len(live), "inflight": sum(live)}

    @property
    def version(self) -> str:
        return f"{self._epoch}:{self._version}"

    def expire(self, now: float | None = None) -> bool:
        """Drop replicas that stopped announcing; True if any was dropped."""
        now = time.monotonic() if now is None else now
        expired = [rid for rid, (_, seen) in self._entries.items() if now - seen > self._ttl_s]
        for replica_id in expired:
            self.remove(replica_id)
        return bool(expired)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        self.expire(now)
        table: dict[str, list[dict[str, str]]] = {}
        for announcement, _ in self._entries.values():
            table.setdefault(announcement.model_id, []).append(
                {"replica_id": announcement.replica_id, "url": announcement.url, "artifact": announcement.artifact}
            )
        return {"version": self.version, "models": table, "draining": self.draining}


class RegistryDirectory:
    """An ingress's local view of the registry (implements ``api.ingress.Directory``)."""

    def __init__(self, registry: Any, model_handles: dict[str, Any], long_poll_s: float = 10.0) -> None:
        self._registry = registry
        self._model_handles = model_handles
        self._long_poll_s = long_poll_s
        self._table: dict[str, list[Endpoint]] = {}
        self._version = ""
        self._task: asyncio.Task[None] | None = None
        self._excluded: dict[str, float] = {}
        self.ready = False
        self.drain_requested = asyncio.Event()  # set once the registry says the service is draining

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def endpoints(self, model_id: str) -> Sequence[Endpoint]:
        endpoints = self._table.get(model_id, ())
        if not self._excluded:
            return endpoints
        now = time.monotonic()
        return [e for e in endpoints if self._excluded.get(e.replica_id, 0.0) <= now]

    def artifact(self, model_id: str) -> str | None:
        """The artifact digest the model's replicas announced, if they agree on one (``None``: unknown)."""
        artifacts = {e.artifact for e in self._table.get(model_id, ())}
        return artifacts.pop() if len(artifacts) == 1 else None

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None:
        """Skip a replica this ingress could not reach until the registry has had time to expire it."""
        self._excluded[endpoint.replica_id] = time.monotonic() + ENTRY_TTL_S

    async def wake(self, model_id: str, timeout_s: float) -> Sequence[Endpoint]:
        """Ask Ray Serve for a replica (scaling from zero) and wait until it is announced."""
        handle = self._model_handles[model_id]
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(handle.wait_ready.remote(), timeout_s)
        except Exception as error:  # noqa: BLE001 - any failure means "no replica yet"
            log.warning("waking %s failed: %s", model_id, error)
            return ()
        while not self.endpoints(model_id) and time.monotonic() < deadline:
            await self.refresh()
            if not self.endpoints(model_id):
                await asyncio.sleep(0.05)
        return self.endpoints(model_id)

    async def refresh(self, wait_s: float = 0.0) -> None:
        """Fetch the table; with ``wait_s``, the registry answers when it changes (long poll)."""
        snapshot = await self._registry.snapshot.remote(self._version, wait_s)
        self.ready = True
        if snapshot.get("draining"):
            self.drain_requested.set()
        if snapshot["version"] == self._version:
            return
        old = {e.replica_id: e for endpoints in self._table.values() for e in endpoints}
        table: dict[str, list[Endpoint]] = {}
        for model_id, entries in snapshot["models"].items():
            table[model_id] = [
                old.get(entry["replica_id"])
                or Endpoint(url=entry["url"], replica_id=entry["replica_id"], artifact=entry.get("artifact") or None)
                for entry in entries
            ]
        self._table = table
        self._version = snapshot["version"]
        now = time.monotonic()
        self._excluded = {rid: until for rid, until in self._excluded.items() if until > now}

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh(wait_s=self._long_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep serving the last table
                log.warning("registry refresh failed: %s", error)
                await asyncio.sleep(0.5)
