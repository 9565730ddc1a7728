"""The node-local state store: nothing to install, exact across the node's processes.

Two files in the state directory, shared by every Paddock process on the node:

* the admission counters (buckets, budgets, concurrency and reservations) in
  a memory-mapped file changed under an exclusive lock (``counters.py``): an
  admission costs a few microseconds, not a database transaction;
* kills, usage and keys' last use in SQLite (WAL), written far less often.

Both survive restarts (kills included). The clock is the node's.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from service.governance.store.base import (
    Admission,
    BucketState,
    BucketStates,
    KillState,
    Quota,
    Reservation,
    StoreUnavailable,
    Usage,
    UsageRow,
)
from service.governance.store.counters import CounterFile, Holder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, level REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kills (scope TEXT PRIMARY KEY, reason TEXT, actor TEXT, at REAL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS key_use (key_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT, tenant TEXT, key_id TEXT, model TEXT,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (day, tenant, key_id, model));
INSERT OR IGNORE INTO meta VALUES ('kill_version', 0);
"""
_RATE_KINDS: dict[str, Literal["requests", "tokens"]] = {
    "requests_per_minute": "requests",
    "tokens_per_minute": "tokens",
}
# Fields of a scope row and of a holder's row in the counter file (see counters.py).
RPM, RPM_AT, TPM, TPM_AT, DAY, DAY_USED, MONTH, MONTH_USED = range(8)
GEN, CONC, H_DAY, DAY_HELD, H_MONTH, MONTH_HELD = range(6)


@functools.lru_cache(maxsize=4)
def _periods(second: int) -> tuple[str, str, int, int]:
    moment = datetime.fromtimestamp(second, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m"), second // 86400, moment.year * 12 + moment.month


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month of ``now``: budget windows."""
    return _periods(int(now))[:2]


def refill(level: float, updated: float, limit: int, now: float) -> float:
    """A per-minute bucket's level at ``now``."""
    return min(float(limit), level + max(0.0, now - updated) * limit / 60.0)


def bucket_state(limit: int, level: float) -> BucketState:
    return BucketState(limit=limit, remaining=max(0, int(level)), reset_s=max(0.0, (limit - level) * 60.0 / limit))


@dataclass
class _Lease:
    expires: float
    tokens: int
    slots: int  # concurrency slots (the reservation's weight)
    conc: str | None
    day: tuple[str, int] | None  # (scope, day number)
    month: tuple[str, int] | None


class LocalStore:
    """The node-local :class:`~service.governance.store.base.Store`."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"governance state store {path}: {error}") from error
        with contextlib.suppress(OSError):  # usage per tenant and key is nobody else's business
            path.chmod(0o600)
        self._counters = CounterFile(path.with_suffix(".counters"))
        self._holder: Holder | None = None
        self._leases: dict[str, _Lease] = {}
        self._next_expiry = float("inf")
        self._id, self._seq = uuid.uuid4().hex[:12], 0  # lease ids: unique per store, cheap per lease

    def _transaction(self, read_only: bool = False) -> _Transaction:
        return _Transaction(self._db, self._lock, self._path, read_only)

    # -- admission (the counter file) ----------------------------------------

    def _me(self, counters: CounterFile, now: float, ttl_s: float) -> Holder:
        """This process as a holder, registered (again, if it lapsed) and renewed."""
        holder = self._holder
        if holder is None or holder.expires <= now:
            self._holder = holder = counters.register(now, ttl_s)
            self._leases.clear()  # anything held under a lapsed registration is void
            self._next_expiry = float("inf")
        elif holder.expires < now + ttl_s / 2:
            counters.renew(holder, now + ttl_s)
        return holder

    async def admit(self, reservation: Reservation, lease_ttl_s: float) -> Admission:
        now = time.time()
        with self._counters.locked() as counters:
            me = self._me(counters, now, lease_ttl_s)
            if self._next_expiry <= now:
                self._sweep(counters, me, now)
            admission, lease = _decide(counters, reservation, now)
            if lease is None:
                return admission
            lease.expires = now + lease_ttl_s
            _hold(counters, me, lease, 1)
            self._seq += 1
            lease_id = f"{self._id}-{self._seq}"
            self._leases[lease_id] = lease
            self._next_expiry = min(self._next_expiry, lease.expires)
            return Admission(True, None, 0.0, lease_id, admission.requests, admission.tokens)

    async def settle(self, reservation: Reservation, lease_id: str | None, usage: Usage) -> None:
        now = time.time()
        with self._counters.locked() as counters:
            lease = self._leases.pop(lease_id, None) if lease_id else None
            if lease is not None and self._holder is not None:
                _hold(counters, self._holder, lease, -1)
            _charge(counters, reservation, usage, now)
        row = (periods(now)[0], reservation.tenant, reservation.key_id, reservation.model)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO usage VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (day, tenant, key_id, model) DO UPDATE "
                "SET requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens",
                (*row, usage.prompt_tokens, usage.completion_tokens),
            )
            db.execute("INSERT OR REPLACE INTO key_use VALUES (?, ?)", (reservation.key_id, now))

    async def renew(self, lease_ids: list[str], lease_ttl_s: float) -> None:
        now = time.time()
        with self._counters.locked() as counters:
            me = self._me(counters, now, lease_ttl_s)
            counters.renew(me, now + lease_ttl_s)
            for lease_id in lease_ids:
                lease = self._leases.get(lease_id)
                if lease is not None:
                    lease.expires = max(lease.expires, now + lease_ttl_s)
            self._sweep(counters, me, now)

    def _sweep(self, counters: CounterFile, me: Holder, now: float) -> None:
        """Release this process's leases that were not renewed in time."""
        for lease_id, lease in list(self._leases.items()):
            if lease.expires <= now:
                del self._leases[lease_id]
                _hold(counters, me, lease, -1)
        self._next_expiry = min((lease.expires for lease in self._leases.values()), default=float("inf"))

    async def hit(self, name: str, per_minute: int) -> float:
        with self._transaction() as db:
            now = time.time()
            row = db.execute("SELECT level, updated FROM buckets WHERE name = ?", (name,)).fetchone()
            level = float(per_minute) if row is None else refill(row[0], row[1], per_minute, now)
            if level < 1:
                return (1 - level) * 60.0 / per_minute
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (name, level - 1, now))
            return 0.0

    # -- kills -------------------------------------------------------------

    async def kill(self, scope: str, reason: str, actor: str) -> KillState:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO kills VALUES (?, ?, ?, ?)", (scope, reason, actor, time.time()))
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'kill_version'")
            return _kills(db)

    async def revive(self, scope: str, actor: str) -> KillState:
        with self._transaction() as db:
            if db.execute("DELETE FROM kills WHERE scope = ?", (scope,)).rowcount:
                db.execute("UPDATE meta SET value = value + 1 WHERE name = 'kill_version'")
            return _kills(db)

    async def kill_version(self) -> int:
        with self._transaction(read_only=True) as db:
            return int(db.execute("SELECT value FROM meta WHERE name = 'kill_version'").fetchone()[0])

    async def kills(self) -> KillState:
        with self._transaction(read_only=True) as db:
            return _kills(db)

    # -- reports -----------------------------------------------------------

    async def last_used(self) -> dict[str, float]:
        with self._transaction(read_only=True) as db:
            return {key: at for key, at in db.execute("SELECT key_id, at FROM key_use")}

    async def usage(self, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        with self._transaction(read_only=True) as db:
            rows = db.execute(
                "SELECT * FROM usage WHERE day >= ? AND day <= ? ORDER BY day, tenant, key_id, model",
                (since or "", until or "9999"),
            ).fetchall()
        return [UsageRow(*row) for row in rows]

    async def close(self) -> None:
        if self._holder is not None:
            with self._counters.locked() as counters:
                counters.renew(self._holder, 0.0)  # a clean stop releases everything at once
        self._counters.close()
        with self._lock:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under the connection's lock; errors become StoreUnavailable."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, path: Path, read_only: bool) -> None:
        self._db, self._lock, self._path, self._read_only = db, lock, path, read_only

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN" if self._read_only else "BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            self._lock.release()
            raise StoreUnavailable(f"governance state store {self._path}: {error}") from error
        return self._db

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if error is not None else "COMMIT")
        except sqlite3.Error as failure:
            if error is None:
                raise StoreUnavailable(f"governance state store {self._path}: {failure}") from failure
        finally:
            self._lock.release()
        if isinstance(error, sqlite3.Error):
            raise StoreUnavailable(f"governance state store {self._path}: {error}") from error


def _scope_row(counters: CounterFile, scope: str, day: int, month: int) -> tuple[int, list[float]]:
    offset = counters.find("s|" + scope, create=True)
    assert offset is not None
    row = counters.read(offset)
    if row[DAY] != day:
        row[DAY], row[DAY_USED] = day, 0
    if row[MONTH] != month:
        row[MONTH], row[MONTH_USED] = month, 0
    return offset, row


def _held(
    counters: CounterFile, live: list[tuple[int, int]], scope: str, field: int, period: tuple[int, int] | None
) -> int:
    """What every live holder holds in ``scope`` (slots, or reserved tokens of the current period)."""
    total = 0
    for index, generation in live:
        offset = counters.find(f"h|{scope}|{index}", create=False)
        if offset is None:
            continue
        row = counters.read(offset)
        if row[GEN] == generation and (period is None or row[period[0]] == period[1]):
            total += int(row[field])
    return total


def _decide(counters: CounterFile, reservation: Reservation, now: float) -> tuple[Admission, _Lease | None]:
    _, _, day, month = _periods(int(now))
    rows: dict[str, tuple[int, list[float]]] = {}
    after: dict[str, tuple[Quota, float]] = {}
    weight = reservation.weight
    lease = _Lease(0.0, reservation.tokens, weight, None, None, None)
    live = counters.holders(now)
    for quota in reservation.quotas:
        if quota.scope not in rows:
            rows[quota.scope] = _scope_row(counters, quota.scope, day, month)
        row = rows[quota.scope][1]
        if quota.kind in _RATE_KINDS:
            need = weight if quota.kind == "requests_per_minute" else reservation.tokens
            i = RPM if quota.kind == "requests_per_minute" else TPM
            level = refill(row[i], row[i + 1], quota.limit, now)
            if need > quota.limit or level < need:
                wait = 0.0 if need > quota.limit else (need - level) * 60.0 / quota.limit
                return Admission(False, quota.kind, wait, **_headers(after, quota, level)), None
            after[quota.kind] = (quota, level - need)
        elif quota.kind == "max_concurrent_requests":
            if weight > quota.limit:  # more slots than the limit: never
                return Admission(False, quota.kind, 0.0, **_headers(after)), None
            if _held(counters, live, quota.scope, CONC, None) + weight > quota.limit:
                return Admission(False, quota.kind, 1.0, **_headers(after)), None
            lease.conc = quota.scope
        else:
            daily = quota.kind == "tokens_per_day"
            used = int(row[DAY_USED if daily else MONTH_USED])
            period = (H_DAY, day) if daily else (H_MONTH, month)
            held = _held(counters, live, quota.scope, DAY_HELD if daily else MONTH_HELD, period)
            if used + held + reservation.tokens > quota.limit:
                return Admission(False, quota.kind, 0.0, **_headers(after)), None
            if daily:
                lease.day = (quota.scope, day)
            else:
                lease.month = (quota.scope, month)
    for quota, level in after.values():
        offset, row = rows[quota.scope]
        i = RPM if quota.kind == "requests_per_minute" else TPM
        row[i], row[i + 1] = level, now
        counters.write(offset, row)
    holds = lease.conc or lease.day or lease.month
    return Admission(True, None, 0.0, None, **_headers(after)), lease if holds else None


def _hold(counters: CounterFile, me: Holder, lease: _Lease, sign: int) -> None:
    """Add (sign 1) or remove (-1) a lease from this holder's rows."""
    changes: dict[str, dict[int, tuple[float, int | None]]] = {}
    if lease.conc:
        changes.setdefault(lease.conc, {})[CONC] = (lease.slots, None)
    if lease.day:
        changes.setdefault(lease.day[0], {})[DAY_HELD] = (lease.tokens, lease.day[1])
    if lease.month:
        changes.setdefault(lease.month[0], {})[MONTH_HELD] = (lease.tokens, lease.month[1])
    for scope, fields in changes.items():
        offset = counters.find(f"h|{scope}|{me.index}", create=True)
        assert offset is not None
        row = counters.read(offset)
        if row[GEN] != me.generation:
            row = [float(me.generation)] + [0.0] * 10
        for field, (amount, period) in fields.items():
            period_field = H_DAY if field == DAY_HELD else H_MONTH
            if period is not None and row[period_field] != period:
                if sign < 0:
                    continue  # reserved in a period that has ended: nothing left to release
                row[period_field], row[field] = period, 0
            row[field] = max(0.0, row[field] + sign * amount)
        counters.write(offset, row)


def _charge(counters: CounterFile, reservation: Reservation, usage: Usage, now: float) -> None:
    """Settle: refund the unused reservation to the token bucket, count the used tokens in the budgets."""
    _, _, day, month = _periods(int(now))
    refund = max(0, reservation.tokens - usage.total)
    for quota in reservation.quotas:
        if quota.kind not in ("tokens_per_minute", "tokens_per_day", "tokens_per_month"):
            continue
        offset, row = _scope_row(counters, quota.scope, day, month)
        if quota.kind == "tokens_per_minute":
            row[TPM] = min(float(quota.limit), refill(row[TPM], row[TPM_AT], quota.limit, now) + refund)
            row[TPM_AT] = now
        elif quota.kind == "tokens_per_day":
            row[DAY_USED] += usage.total
        else:
            row[MONTH_USED] += usage.total
        counters.write(offset, row)


def _headers(after: dict[str, tuple[Quota, float]], denied: Quota | None = None, level: float = 0.0) -> BucketStates:
    states: BucketStates = {}
    for kind, (quota, left) in after.items():
        states[_RATE_KINDS[kind]] = bucket_state(quota.limit, left)
    if denied is not None:
        states[_RATE_KINDS[denied.kind]] = bucket_state(denied.limit, level)
    return states


def _kills(db: sqlite3.Connection) -> KillState:
    version = int(db.execute("SELECT value FROM meta WHERE name = 'kill_version'").fetchone()[0])
    scopes = {
        scope: {"reason": reason, "actor": actor, "at": at}
        for scope, reason, actor, at in db.execute("SELECT scope, reason, actor, at FROM kills")
    }
    return KillState(version, scopes)
