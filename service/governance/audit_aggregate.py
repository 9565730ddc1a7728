"""Repeated refusals as one audit record with a count, so that a flood of them writes O(1) records per window.

Two refusals are the same when they agree on ``reason``, ``status``,
``client``, ``key_id``, ``tenant``, ``route``, ``model`` and ``detail``
(every field but the request's id, times and trace). The first of a burst is
written at once (``count: 1``), so whoever watches the log sees it when it
happens. The ones after it within ``window_s`` are counted, and written as one
record when the window ends (``aggregated: true``, ``count``, ``first_time``,
``last_time``, the first and last request ids); while they keep coming, one
such record per window. A burst that stops leaves nothing pending: the next
refusal is again written at once. Every refused record has a ``count``, so the
refusals on record are the sum of the counts. Admitted requests are never
aggregated: only refusals pass through here.

At most ``max_keys`` bursts are tracked at once. Beyond that (a flood from
many addresses or keys), a refusal is counted in its reason's, status' and
route's *overflow* burst, whose records have ``overflow: true`` and no client,
key, tenant, model or detail: the count stays exact, the attribution is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FIELDS = ("reason", "status", "client", "key_id", "tenant", "route", "model", "detail")
_ATTRIBUTION = ("client", "key_id", "tenant", "model", "detail")
MAX_KEYS = 1024


@dataclass(slots=True)
class _Burst:
    """One kind of refusal: when its window began, and what came after its first record was written."""

    started: float
    count: int = 0
    first: dict[str, Any] | None = None  # the first refusal held back (the aggregate's base)
    last_time: object = None
    last_request_id: object = None

    def hold(self, record: dict[str, Any]) -> None:
        if self.first is None:
            self.first = record
        self.count += 1
        self.last_time, self.last_request_id = record.get("time"), record.get("request_id")


class RefusalAggregator:
    """Writes refusals through ``write``: the first of each burst at once, the rest as one record per window.

    ``clock`` (monotonic seconds) decides the windows; call ``flush_due`` now and then (the governor does, every
    second) and ``flush`` at shutdown. Thread-safe.
    """

    def __init__(
        self,
        window_s: float,
        write: Callable[[dict[str, Any]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.window_s, self._write, self._clock, self._max_keys = window_s, write, clock, max_keys
        self._bursts: dict[tuple[object, ...], _Burst] = {}
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Refusals counted and not yet written."""
        with self._lock:
            return sum(burst.count for burst in self._bursts.values())

    def offer(self, record: dict[str, Any]) -> None:
        """One refusal's record: written now (``count: 1``) if it starts a burst, else counted in it."""
        if self.window_s <= 0:
            self._write({**record, "count": 1})
            return
        key = tuple(record.get(name) for name in FIELDS)
        with self._lock:
            now = self._clock()
            if key not in self._bursts and len(self._bursts) >= self._max_keys:
                record = {**record, **dict.fromkeys(_ATTRIBUTION), "overflow": True}
                key = (*(record.get(name) for name in FIELDS), "overflow")
            burst = self._bursts.get(key)
            if burst is not None and now - burst.started >= self.window_s:
                self._close(key, burst, now)  # its window is over (flush_due has not come by yet)
                burst = self._bursts.get(key)
            if burst is None:
                self._bursts[key] = _Burst(now)
                self._write({**record, "count": 1})
            else:
                burst.hold(record)

    def flush_due(self) -> int:
        """Write the aggregate of every burst whose window is over; return how many records were written."""
        with self._lock:
            now = self._clock()
            due = [(key, burst) for key, burst in self._bursts.items() if now - burst.started >= self.window_s]
            return sum(self._close(key, burst, now) for key, burst in due)

    def flush(self) -> int:
        """Write every pending aggregate now (at shutdown) and forget every burst."""
        with self._lock:
            written = sum(self._emit(burst) for burst in self._bursts.values())
            self._bursts.clear()
            return written

    def _close(self, key: tuple[object, ...], burst: _Burst, now: float) -> int:
        """End ``burst``'s window: write its aggregate and go on counting if it held any, else forget it."""
        if burst.count == 0:
            del self._bursts[key]
            return 0
        written = self._emit(burst)
        self._bursts[key] = _Burst(now)
        return written

    def _emit(self, burst: _Burst) -> int:
        if burst.first is None:
            return 0
        record = {k: v for k, v in burst.first.items() if k not in ("time", "latency_s", "trace_id")}
        record.update(
            count=burst.count,
            aggregated=True,
            window_s=self.window_s,
            first_time=burst.first.get("time"),
            last_time=burst.last_time,
            last_request_id=burst.last_request_id,
        )
        self._write(record)
        return 1
