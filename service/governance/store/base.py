"""The shared governance state: counters, leases, budgets, kills, usage.

Every process that admits requests shares one :class:`Store`, so limits are
exact across processes: the node-local store (``local.py``: a shared
memory-mapped counter file and SQLite in the state directory) for one node,
Redis (``redis.py``) for many. Each admission is one atomic step in the
store, using the store's own clock.

Semantics every backend implements (``tests/governance/test_store.py``):

* requests/minute and tokens/minute are token buckets holding at most the
  per-minute limit and refilling at limit/60 per second; a request takes its
  ``weight`` (1, or the number of prompts of a batch) from the request bucket
  and its reserved tokens from the token bucket;
* concurrency and the day/month budgets are counted over *leases*: an
  admitted request holds a lease (of ``weight`` concurrency slots) until it
  settles or the lease expires
  (``lease_ttl_s`` after the last renewal — a crashed process's leases lapse);
  the day/month budgets count settled tokens plus the reservations of live
  leases; days and months are UTC;
* settling returns the unused part of the reservation to the token bucket,
  adds the used tokens to the budgets and to the usage table, and ends the lease;
* a request whose weight exceeds a request or concurrency limit (or whose
  tokens exceed the tokens-per-minute limit) is refused with ``retry_after_s``
  0: waiting would not help;
* a reservation carries at most one quota of each kind (``governor.effective`` makes them so);
* kills are persistent scopes (``all``, ``model:<id>``, ``tenant:<id>``,
  ``key:<id>``) with a version that changes on every kill or revival.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypedDict

LimitKind = Literal[
    "requests_per_minute", "tokens_per_minute", "max_concurrent_requests", "tokens_per_day", "tokens_per_month"
]
LIMIT_KINDS: tuple[LimitKind, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "tokens_per_day",
    "tokens_per_month",
)


class StoreUnavailable(Exception):
    """The state store could not be reached or failed: governance fails closed by default."""


@dataclass(frozen=True)
class RedisAuth:
    """How a Redis store authenticates, given beside its URL: nothing here is spliced into it.

    ``password`` is sent as is (``@ / # ? %`` need no encoding); ``username`` is an ACL user;
    ``ca_file`` is the CA bundle that verifies a ``rediss://`` server.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None


@dataclass(frozen=True)
class Quota:
    """One counted limit: ``scope`` is ``tenant:<id>`` or ``key:<id>``."""

    kind: LimitKind
    scope: str
    limit: int


@dataclass(frozen=True)
class Reservation:
    """What one request asks of the store."""

    request_id: str
    tenant: str
    key_id: str
    model: str
    tokens: int  # worst-case tokens, reserved up front
    quotas: tuple[Quota, ...] = ()
    weight: int = 1  # requests it counts as (the prompts of a batch) for requests/minute and concurrency


@dataclass(frozen=True)
class BucketState:
    """A rate-limit bucket after the decision (for ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float  # seconds until the bucket is full again


class BucketStates(TypedDict, total=False):
    """The rate buckets a decision reports, as keyword arguments of :class:`Admission`."""

    requests: BucketState
    tokens: BucketState


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: LimitKind | None = None  # the limit that refused it
    retry_after_s: float = 0.0  # when a retry could succeed (rate limits), 0 = unknown
    lease_id: str | None = None
    requests: BucketState | None = None
    tokens: BucketState | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class KillState:
    version: int
    scopes: dict[str, dict[str, object]] = field(default_factory=dict)  # scope -> {reason, actor, at}


@dataclass(frozen=True)
class UsageRow:
    day: str  # YYYY-MM-DD, UTC
    tenant: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


class Store(Protocol):
    """The operations governance needs from shared state (all atomic)."""

    async def admit(self, reservation: Reservation, lease_ttl_s: float) -> Admission: ...

    async def settle(self, reservation: Reservation, lease_id: str | None, usage: Usage) -> None: ...

    async def renew(self, lease_ids: list[str], lease_ttl_s: float) -> None: ...

    async def hit(self, name: str, per_minute: int) -> float:
        """Take one from a per-minute bucket ``name``; 0.0 if allowed, else seconds to wait."""
        ...

    async def kill(self, scope: str, reason: str, actor: str) -> KillState: ...

    async def revive(self, scope: str, actor: str) -> KillState: ...

    async def kill_version(self) -> int: ...

    async def kills(self) -> KillState: ...

    async def last_used(self) -> dict[str, float]:
        """Key id -> unix time of its last request (recorded when the request settles)."""
        ...

    async def usage(self, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        """Usage rows with ``since <= day <= until`` (YYYY-MM-DD, inclusive)."""
        ...

    async def close(self) -> None: ...
