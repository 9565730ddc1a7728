"""The node-local state store: one SQLite database in the state directory.

Every Paddock process on the node opens the same file; each admission is
one ``BEGIN IMMEDIATE`` transaction, so counters are exact across processes
without any extra service. WAL mode keeps readers off the writer's lock, and
the file survives restarts (kills included). The clock is the node's.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from service.governance.store.base import (
    Admission,
    BucketState,
    KillState,
    Quota,
    Reservation,
    StoreUnavailable,
    Usage,
    UsageRow,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scopes (
    scope TEXT PRIMARY KEY, rpm REAL, rpm_at REAL, tpm REAL, tpm_at REAL,
    day TEXT, day_used INTEGER, day_held INTEGER, month TEXT, month_used INTEGER, month_held INTEGER);
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, level REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, expires REAL NOT NULL, tokens INTEGER NOT NULL, conc_scope TEXT,
    day_scope TEXT, day TEXT, month_scope TEXT, month TEXT);
CREATE INDEX IF NOT EXISTS leases_conc ON leases (conc_scope, expires);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires);
CREATE TABLE IF NOT EXISTS kills (scope TEXT PRIMARY KEY, reason TEXT, actor TEXT, at REAL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS key_use (key_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT, tenant TEXT, key_id TEXT, model TEXT,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (day, tenant, key_id, model));
INSERT OR IGNORE INTO meta VALUES ('kill_version', 0);
"""

_RATE_KINDS = {"requests_per_minute": "requests", "tokens_per_minute": "tokens"}


@functools.lru_cache(maxsize=4)
def _periods(second: int) -> tuple[str, str]:
    moment = datetime.fromtimestamp(second, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month of ``now``: budget windows."""
    return _periods(int(now))


def refill(level: float, updated: float, limit: int, now: float) -> float:
    """A per-minute bucket's level at ``now``."""
    return min(float(limit), level + max(0.0, now - updated) * limit / 60.0)


def bucket_state(limit: int, level: float) -> BucketState:
    return BucketState(limit=limit, remaining=max(0, int(level)), reset_s=max(0.0, (limit - level) * 60.0 / limit))


class LocalStore:
    """SQLite-backed :class:`~service.governance.store.base.Store` shared by a node's processes."""

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

    def _transaction(self, read_only: bool = False) -> _Transaction:
        return _Transaction(self._db, self._lock, self._path, read_only)

    # -- admission ---------------------------------------------------------

    async def admit(self, reservation: Reservation, lease_ttl_s: float) -> Admission:
        with self._transaction() as db:
            return _admit(db, reservation, lease_ttl_s, time.time())

    async def settle(self, reservation: Reservation, lease_id: str | None, usage: Usage) -> None:
        with self._transaction() as db:
            _settle(db, reservation, lease_id, usage, time.time())

    async def renew(self, lease_ids: list[str], lease_ttl_s: float) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany("UPDATE leases SET expires = ? WHERE id = ?", [(now + lease_ttl_s, i) for i in lease_ids])
            _sweep(db, now)

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


_BUDGET_KINDS = {"tokens_per_day": "day", "tokens_per_month": "month"}
_NEW_SCOPE = (None, 0.0, None, 0.0, "", 0, 0, "", 0, 0)  # rpm, rpm_at, tpm, tpm_at, day, used, held, month, …


class _Scope:
    """One scope's counters (a row of ``scopes``), brought up to date for ``now``."""

    __slots__ = ("name", "values", "changed")

    def __init__(self, name: str, row: tuple | None, now: float) -> None:
        self.name = name
        self.values = list(row or _NEW_SCOPE)
        self.changed = False
        day, month = periods(now)
        if self.values[4] != day:
            self.values[4:7] = [day, 0, 0]
        if self.values[7] != month:
            self.values[7:10] = [month, 0, 0]

    def level(self, kind: str, limit: int, now: float) -> float:
        i = 0 if kind == "requests_per_minute" else 2
        level, at = self.values[i], self.values[i + 1]
        return float(limit) if level is None else refill(level, at, limit, now)

    def set_level(self, kind: str, level: float, now: float) -> None:
        i = 0 if kind == "requests_per_minute" else 2
        self.values[i : i + 2] = [level, now]
        self.changed = True

    def spent(self, kind: str) -> int:
        i = 5 if kind == "tokens_per_day" else 8
        return int(self.values[i] + self.values[i + 1])

    def add(self, kind: str, used: int, held: int) -> None:
        i = 5 if kind == "tokens_per_day" else 8
        self.values[i] += used
        self.values[i + 1] = max(0, self.values[i + 1] + held)
        self.changed = True


def _load(db: sqlite3.Connection, names: set[str], now: float) -> dict[str, _Scope]:
    marks = ",".join("?" * len(names))
    rows = {row[0]: row[1:] for row in db.execute(f"SELECT * FROM scopes WHERE scope IN ({marks})", list(names))}  # noqa: S608
    return {name: _Scope(name, rows.get(name), now) for name in names}


def _save(db: sqlite3.Connection, scopes: dict[str, _Scope]) -> None:
    changed = [(s.name, *s.values) for s in scopes.values() if s.changed]
    if changed:
        db.executemany("INSERT OR REPLACE INTO scopes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", changed)


def _admit(db: sqlite3.Connection, reservation: Reservation, lease_ttl_s: float, now: float) -> Admission:
    quotas = reservation.quotas
    scopes = _load(db, {q.scope for q in quotas if q.kind != "max_concurrent_requests"}, now) if quotas else {}
    after: dict[str, tuple[Quota, float]] = {}
    conc: Quota | None = None
    for quota in quotas:
        if quota.kind in _RATE_KINDS:
            need = 1 if quota.kind == "requests_per_minute" else reservation.tokens
            level = scopes[quota.scope].level(quota.kind, quota.limit, now)
            if need > quota.limit or level < need:
                wait = 0.0 if need > quota.limit else (need - level) * 60.0 / quota.limit
                return Admission(False, quota.kind, wait, **_headers(after, quota, level))
            after[quota.kind] = (quota, level - need)
        elif quota.kind in _BUDGET_KINDS:
            if scopes[quota.scope].spent(quota.kind) + reservation.tokens > quota.limit:
                return Admission(False, quota.kind, 0.0, **_headers(after))
        else:
            conc = quota
    if conc is not None:
        held = db.execute(
            "SELECT COUNT(*) FROM leases WHERE conc_scope = ? AND expires > ?", (conc.scope, now)
        ).fetchone()[0]
        if held >= conc.limit:
            return Admission(False, conc.kind, 1.0, **_headers(after))
    for quota, level in after.values():
        scopes[quota.scope].set_level(quota.kind, level, now)
    budgets = {q.kind: q.scope for q in quotas if q.kind in _BUDGET_KINDS}
    for kind, scope in budgets.items():
        scopes[scope].add(kind, 0, reservation.tokens)
    _save(db, scopes)
    lease_id = None
    if conc is not None or budgets:
        lease_id = uuid.uuid4().hex
        day, month = periods(now)
        db.execute(
            "INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                lease_id,
                now + lease_ttl_s,
                reservation.tokens,
                conc.scope if conc else None,
                budgets.get("tokens_per_day"),
                day,
                budgets.get("tokens_per_month"),
                month,
            ),
        )
    return Admission(True, None, 0.0, lease_id, **_headers(after))


def _headers(after: dict[str, tuple[Quota, float]], denied: Quota | None = None, level: float = 0.0) -> dict:
    states = {_RATE_KINDS[kind]: bucket_state(quota.limit, left) for kind, (quota, left) in after.items()}
    if denied is not None:
        states[_RATE_KINDS[denied.kind]] = bucket_state(denied.limit, level)
    return states


def _release(db: sqlite3.Connection, lease_id: str, now: float) -> None:
    row = db.execute(
        "SELECT tokens, day_scope, day, month_scope, month FROM leases WHERE id = ?", (lease_id,)
    ).fetchone()
    if row is None:
        return  # lapsed and swept: its reservation is already released
    tokens, day_scope, day, month_scope, month = row
    db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
    names = {n for n in (day_scope, month_scope) if n}
    if not names:
        return
    scopes = _load(db, names, now)
    if day_scope and scopes[day_scope].values[4] == day:
        scopes[day_scope].add("tokens_per_day", 0, -tokens)
    if month_scope and scopes[month_scope].values[7] == month:
        scopes[month_scope].add("tokens_per_month", 0, -tokens)
    _save(db, scopes)


def _sweep(db: sqlite3.Connection, now: float) -> None:
    """Release the reservations of leases whose holder stopped renewing them."""
    for (lease_id,) in db.execute("SELECT id FROM leases WHERE expires <= ?", (now,)).fetchall():
        _release(db, lease_id, now)


def _settle(db: sqlite3.Connection, reservation: Reservation, lease_id: str | None, usage: Usage, now: float) -> None:
    if lease_id is not None:
        _release(db, lease_id, now)
    used = usage.total
    refund = max(0, reservation.tokens - used)
    counted = [q for q in reservation.quotas if q.kind in _BUDGET_KINDS or (q.kind == "tokens_per_minute" and refund)]
    if counted:
        scopes = _load(db, {q.scope for q in counted}, now)
        for quota in counted:
            scope = scopes[quota.scope]
            if quota.kind == "tokens_per_minute":
                level = scope.level(quota.kind, quota.limit, now)
                scope.set_level(quota.kind, min(float(quota.limit), level + refund), now)
            else:
                scope.add(quota.kind, used, 0)
        _save(db, scopes)
    db.execute(
        "INSERT INTO usage VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (day, tenant, key_id, model) DO UPDATE SET "
        "requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens",
        (
            periods(now)[0],
            reservation.tenant,
            reservation.key_id,
            reservation.model,
            usage.prompt_tokens,
            usage.completion_tokens,
        ),
    )
    db.execute("INSERT OR REPLACE INTO key_use VALUES (?, ?)", (reservation.key_id, now))


def _kills(db: sqlite3.Connection) -> KillState:
    version = int(db.execute("SELECT value FROM meta WHERE name = 'kill_version'").fetchone()[0])
    scopes = {
        scope: {"reason": reason, "actor": actor, "at": at}
        for scope, reason, actor, at in db.execute("SELECT scope, reason, actor, at FROM kills")
    }
    return KillState(version, scopes)
