"""Shared governance state: pick a backend by URL (``open_store``)."""

from __future__ import annotations

from pathlib import Path

from service.governance.store.base import RedisAuth, Store, StoreUnavailable


def open_store(url: str, state_dir: Path, redis_auth: RedisAuth | None = None) -> Store:
    """``local`` (SQLite in ``state_dir``), ``sqlite:///path`` or ``redis[s]://…`` (with ``redis_auth``)."""
    if url == "local":
        from service.governance.store.local import LocalStore

        return LocalStore(state_dir / "governance.sqlite3")
    if url.startswith("sqlite://"):
        from service.governance.store.local import LocalStore

        return LocalStore(Path(url.removeprefix("sqlite://")))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.governance.store.redis import RedisStore

        return RedisStore(url, auth=redis_auth)
    raise StoreUnavailable(f"unknown state store {url!r}: use local, sqlite:///path or redis://host:port/db")


__all__ = ["RedisAuth", "Store", "StoreUnavailable", "open_store"]
