"""Redis-only behaviour of the state store: outages, reconnection, kill propagation, persistence."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from service.governance.store.base import Quota, Reservation, StoreUnavailable, Usage
from service.governance.store.redis import RedisStore, split_url

PASSWORD = "s3cret-pw"
QUOTAS = (
    Quota("requests_per_minute", "tenant:acme", 100),
    Quota("tokens_per_minute", "tenant:acme", 10_000),
    Quota("max_concurrent_requests", "tenant:acme", 10),
    Quota("tokens_per_day", "tenant:acme", 100_000),
    Quota("tokens_per_month", "key:k1", 1_000_000),
)
RESERVATION = Reservation("r", "acme", "k1", "m", 100, QUOTAS)


@pytest.fixture
def own_server(start_redis):
    """A redis-server of this test's own: password-protected, persistent (AOF)."""
    return start_redis(persistent=True, password=PASSWORD)


def authenticated(server) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"


def operations(store: RedisStore) -> dict[str, object]:
    return {
        "admit": lambda: store.admit(RESERVATION, 30),
        "settle": lambda: store.settle(RESERVATION, "lease", Usage(1, 1)),
        "renew": lambda: store.renew(["lease"], 30),
        "hit": lambda: store.hit("authfail:x", 3),
        "kill": lambda: store.kill("all", "r", "a"),
        "revive": lambda: store.revive("all", "a"),
        "kill_version": store.kill_version,
        "kills": store.kills,
        "last_used": store.last_used,
        "usage": store.usage,
        "subscribe_kills": lambda: anext(store.subscribe_kills()),
    }


def test_the_shown_url_never_carries_credentials() -> None:
    client, prefix, shown = split_url("redis://user:pw@redis.example:6380/2?paddock_prefix=x:&password=pw")
    assert (prefix, shown) == ("x:", "redis://user:***@redis.example:6380/2")
    assert "paddock_prefix" not in client and "pw" in client
    assert split_url("unix:///run/redis.sock?db=1")[2] == "unix:///run/redis.sock"


async def test_redis_down_fails_fast_with_a_masked_url_and_recovers(own_server) -> None:
    store = RedisStore(authenticated(own_server))
    try:
        assert (await store.admit(RESERVATION, 30)).admitted
        own_server.stop()
        for name, call in operations(store).items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                await call()
            assert time.monotonic() - started < 3, name
            assert f"redis://:***@127.0.0.1:{own_server.port}/0" in str(raised.value), name
            assert PASSWORD not in str(raised.value), name
        own_server.start()  # same port, same data directory: the same client reconnects
        assert (await store.admit(RESERVATION, 30)).admitted
        assert await store.hit("authfail:y", 3) == 0.0
    finally:
        await store.close()


async def test_a_silent_server_times_out_within_three_seconds() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        store = RedisStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.admit(RESERVATION, 30)
            assert time.monotonic() - started < 3
        finally:
            await store.close()


async def test_kills_propagate_through_pub_sub(redis_server) -> None:
    url = f"{redis_server.url}?paddock_prefix=pubsub:"
    watcher, admin = RedisStore(url), RedisStore(url)
    versions = watcher.subscribe_kills()
    try:
        current = await asyncio.wait_for(anext(versions), 2)  # subscribed
        assert current == await admin.kill_version()
        killed = await admin.kill("tenant:acme", "abuse", "ops")
        assert await asyncio.wait_for(anext(versions), 1) == killed.version > current
        revived = await admin.revive("tenant:acme", "ops")
        assert await asyncio.wait_for(anext(versions), 1) == revived.version
    finally:
        await versions.aclose()
        await watcher.close()
        await admin.close()


async def test_a_cancelled_subscriber_unsubscribes(redis_server) -> None:
    store = RedisStore(f"{redis_server.url}?paddock_prefix=cancel:")
    try:

        async def consume() -> None:
            async for _ in store.subscribe_kills():
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        channels = await store._redis.pubsub_numsub("cancel:kills")
        assert channels == [("cancel:kills", 0)]
    finally:
        await store.close()


async def test_kill_state_survives_a_redis_restart(own_server) -> None:
    store = RedisStore(authenticated(own_server))
    try:
        killed = await store.kill("model:m", "incident 7", "admin")
        own_server.stop()
        own_server.start()
        state = await store.kills()
        assert state.version == killed.version
        assert state.scopes["model:m"]["reason"] == "incident 7"
        assert (await store.admit(RESERVATION, 30)).admitted  # scripts reloaded after the restart
    finally:
        await store.close()
