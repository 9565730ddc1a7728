"""The failed-authentication throttle: it limits failures, never a valid key.

The key is checked first (``Governor.authenticate``); only a request whose key
is missing, unknown, disabled or expired reaches :meth:`AuthThrottle.failed`,
which counts the failure against the client address in the shared store
(``authfail:<address>``, ``auth_failures_per_minute``). Once an address is over
its limit, its failed attempts are answered 429 instead of 401 until the bucket
refills; a valid key from the same address still passes. Behind a proxy that
shows one address for every client, someone guessing keys therefore locks out
only other guesses, never the tenants.

If the store cannot be reached, the throttle does not turn off: failures are
counted in this process instead (:class:`LocalBuckets`, the same per-minute
limit), the store error is counted in
``paddock_governance_store_errors{operation="auth"}`` and logged once per outage.
"""

from __future__ import annotations

import logging
import time

from service.governance.refusal import Refusal
from service.governance.store.base import Store, StoreUnavailable
from service.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)

_MAX_ADDRESSES = 10_000  # remembered throttled addresses / local buckets, per process


class LocalBuckets:
    """Per-minute token buckets in this process's memory: the throttle's fallback when the store is down."""

    def __init__(self, limit: int = _MAX_ADDRESSES) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (level, updated)
        self._limit = limit

    def hit(self, name: str, per_minute: int) -> float:
        """Take one from bucket ``name``; 0.0 if allowed, else seconds until one is back (as ``Store.hit``)."""
        now = time.monotonic()
        level, updated = self._buckets.get(name, (float(per_minute), now))
        level = min(float(per_minute), level + (now - updated) * per_minute / 60.0)
        if level < 1:
            self._buckets[name] = (level, now)
            return (1 - level) * 60.0 / per_minute
        if name not in self._buckets and len(self._buckets) >= self._limit:
            self._forget_full(per_minute, now)
        self._buckets[name] = (level - 1, now)
        return 0.0

    def _forget_full(self, per_minute: int, now: float) -> None:
        """Drop buckets that have refilled (they read as full when absent); the oldest half if none has."""
        full = [n for n, (lv, at) in self._buckets.items() if lv + (now - at) * per_minute / 60.0 >= per_minute]
        if not full:
            full = sorted(self._buckets, key=lambda n: self._buckets[n][1])[: len(self._buckets) // 2]
        for name in full:
            del self._buckets[name]

    def __len__(self) -> int:
        return len(self._buckets)


class AuthThrottle:
    """Counts failed authentications per client address; answers 429 once an address is over its limit."""

    def __init__(self, store: Store, per_minute: int, metrics: ServiceMetrics) -> None:
        self.store = store
        self._per_minute = per_minute
        self._metrics = metrics
        self._throttled: dict[str, float] = {}  # address -> monotonic time its throttle ends (no store call till then)
        self._local = LocalBuckets()
        self._degraded = False

    def _throttle(self, wait_s: float) -> Refusal:
        retry = max(1, round(wait_s))
        return Refusal("auth_throttled", "Too many failed authentication attempts; retry later.", retry_after_s=retry)

    async def failed(self, client: str, refusal: Refusal) -> Refusal:
        """What to answer a failed authentication from ``client``: ``refusal`` (401) or, over the limit, 429."""
        now = time.monotonic()
        until = self._throttled.get(client)
        if until is not None and until > now:
            return self._throttle(until - now)  # already over: no store call per attempt
        wait = await self._hit(client)
        if wait <= 0:
            return refusal
        self._throttled[client] = now + wait
        if len(self._throttled) > _MAX_ADDRESSES:
            self._throttled = {c: t for c, t in self._throttled.items() if t > now}
        return self._throttle(wait)

    async def _hit(self, client: str) -> float:
        name = f"authfail:{client}"
        try:
            wait = await self.store.hit(name, self._per_minute)
        except StoreUnavailable as error:
            self._metrics.store_errors.labels("auth").inc()
            if not self._degraded:
                self._degraded = True
                log.error("governance store unavailable: counting failed authentications in this process: %s", error)
            return self._local.hit(name, self._per_minute)
        if self._degraded:
            self._degraded = False
            log.warning("governance store reachable again: failed authentications are counted in the store")
        return wait
