"""The governance decision for every API request, in the ingress process.

Plain Python: through an :class:`~service.governance.lifecycle.Intake` the
ingress hands it the ``Authorization`` header, the client address and the
parsed body; it answers with a :class:`~service.governance.lifecycle.Ticket`
(the shaped request to forward) or raises a :class:`Refusal`. Key lookup and
policy are in memory; one atomic store call admits the request against every
counted limit, and one settles it on the engine's usage afterwards. Every
decision is an audit record written before forwarding; the outcome completes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from service.config.schema import ModelConfig, ServiceConfig
from service.governance.keys import KeyIndex, Principal, bearer
from service.governance.lifecycle import Intake, Ticket
from service.governance.params import shape_request
from service.governance.policy import ALL_MODELS, Limits, Parameters
from service.governance.records import AuditTrail
from service.governance.refusal import Reason, Refusal
from service.governance.reload import PolicyHolder
from service.governance.store.base import LIMIT_KINDS, Admission, Quota, Reservation, Store, StoreUnavailable, Usage
from service.governance.throttle import AuthThrottle
from service.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)

_RATE_LIMITED = {"requests_per_minute", "tokens_per_minute", "max_concurrent_requests"}


@dataclass(frozen=True)
class GovernanceOptions:
    fail_open: bool = False
    lease_ttl_s: float = 30.0
    auth_failures_per_minute: int = 20
    kill_poll_s: float = 0.25
    cache_salt_secret: bytes = b""


_REQUEST_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
_TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    for (limit, remaining, reset), state in (
        (_REQUEST_HEADERS, admission.requests),
        (_TOKEN_HEADERS, admission.tokens),
    ):
        if state is not None:
            headers[limit] = str(state.limit)
            headers[remaining] = str(state.remaining)
            headers[reset] = f"{state.reset_s:.3f}s"
    return headers


def effective(principal: Principal) -> tuple[Limits, Parameters, tuple[Quota, ...]]:
    """The tenant's policy with the key's overrides; quotas counted per their owner."""
    tenant, key = principal.tenant, principal.key
    limits = tenant.limits.model_copy(update=key.limits) if key.limits else tenant.limits
    params = tenant.parameters.model_copy(update=key.parameters) if key.parameters else tenant.parameters
    quotas = []
    for kind in LIMIT_KINDS:
        value = getattr(limits, kind)
        if value is not None:
            scope = f"key:{key.id}" if kind in key.limits else f"tenant:{tenant.id}"
            quotas.append(Quota(kind, scope, value))
    return limits, params, tuple(quotas)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a principal may do under the policy in force: :func:`effective`, its models and its cache salt."""

    limits: Limits
    params: Parameters
    quotas: tuple[Quota, ...]
    models: frozenset[str]  # model ids
    cache_salt: str


class Governor:
    """Authentication, authorisation, limits, kills and audit for one ingress process."""

    def __init__(
        self,
        config: ServiceConfig,
        policy: PolicyHolder,
        store: Store,
        trail: AuditTrail,
        metrics: ServiceMetrics,
        options: GovernanceOptions,
    ) -> None:
        self._names = config.model_by_name()
        self._models = {m.id: m for m in config.models}
        self.policy = policy
        self._throttle = AuthThrottle(store, options.auth_failures_per_minute, metrics)
        self.store = store
        self.trail = trail
        self._metrics = metrics
        self._decision_seconds = metrics.decision_seconds
        self._options = options
        # Grants of the policy version in force (by id of their owner, kept alive by the entry; see grant()).
        self._grants: dict[int, tuple[object, Grant]] = {}
        self._grants_index: KeyIndex | None = None
        self._kills: dict[str, dict[str, object]] = {}
        self._kill_version = -1
        # Admitted, unsettled tickets, held weakly: a ticket nobody holds is neither renewed nor killed, and its
        # drop guard settles it (_dropped).
        self.active: weakref.WeakSet[Ticket] = weakref.WeakSet()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Store:
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = self._throttle.store = store

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.refresh_kills()
        except StoreUnavailable as error:
            log.error("governance state store unavailable at start: %s", error)
        self._tasks = [
            asyncio.create_task(self._watch_kills()),
            asyncio.create_task(self._listen_kills()),
            asyncio.create_task(self._renew_leases()),
            asyncio.create_task(self.policy.watch()),
            asyncio.create_task(self.trail.flush_refusals()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self.store.close()
        self.trail.close()

    # -- one request ---------------------------------------------------------

    def intake(self, request_id: str, route: str, client: str) -> Intake:
        """Where one API request enters governance (see ``lifecycle.py``)."""
        return Intake(self, request_id, route, client)

    # -- authentication ----------------------------------------------------

    async def authenticate(self, authorization: str | None, client: str) -> Principal:
        """The key's principal; a failure is 401, or 429 once ``client`` failed too often (a valid key never is)."""
        presented = bearer(authorization)
        principal = self.policy.index.lookup(presented) if presented else None
        if principal is None:
            reason: Reason = "missing_api_key" if presented is None else "invalid_api_key"
            message = (
                "You didn't provide an API key. Send it as `Authorization: Bearer pk-…`"
                " (or as `x-api-key: pk-…` on Anthropic's routes)."
                if presented is None
                else "Incorrect API key provided."
            )
            raise await self._throttle.failed(client, Refusal(reason, message))
        if principal.usable_until > time.time():  # enabled, of an enabled tenant, not expired
            return principal
        key = principal.key
        if not key.enabled or key.expired(datetime.now(UTC)):
            state = "disabled" if not key.enabled else "expired"
            raise await self._throttle.failed(client, Refusal("invalid_api_key", f"This API key is {state}."))
        if not principal.tenant.enabled:
            raise Refusal("tenant_disabled", "This API key's organization is disabled.")
        return principal

    # -- authorisation -----------------------------------------------------

    def grant(self, principal: Principal) -> Grant:
        """The principal's :class:`Grant`, worked out once per policy version.

        A key without overrides gets its tenant's grant (cached per tenant); a key with overrides its own.
        Entries hold their owner, so an id is never reused while cached; a reload starts a new cache.
        """
        index = self.policy.index
        if index is not self._grants_index:
            self._grants, self._grants_index = {}, index
        key = principal.key
        owner: object = principal if key.limits or key.parameters or key.models is not None else principal.tenant
        entry = self._grants.get(id(owner))
        if entry is None or entry[0] is not owner:
            entry = self._grants[id(owner)] = (owner, self._new_grant(principal))
        return entry[1]

    def _new_grant(self, principal: Principal) -> Grant:
        limits, params, quotas = effective(principal)
        names = principal.key.models if principal.key.models is not None else principal.tenant.models
        if ALL_MODELS in names:
            models = frozenset(self._models)
        else:
            models = frozenset(self._names[n].id for n in names if n in self._names)
        material = self._options.cache_salt_secret + principal.tenant.id.encode()
        return Grant(limits, params, quotas, models, hashlib.sha256(material).hexdigest()[:32])

    def allowed(self, principal: Principal) -> set[str]:
        """Model ids this principal may use."""
        return set(self.grant(principal).models)

    def resolve(self, principal: Principal, name: str) -> ModelConfig | None:
        model = self._names.get(name)
        if model is None or model.id not in self.grant(principal).models:
            return None
        return model

    def _check_kills(self, principal: Principal, model: ModelConfig) -> None:
        for scope in ("all", f"model:{model.id}", f"tenant:{principal.tenant.id}", f"key:{principal.key.id}"):
            if scope in self._kills:
                raise Refusal("killed", _kill_message(scope, model), detail=scope)

    async def admit(
        self, principal: Principal, model: ModelConfig, route: str, body: dict[str, Any], request_id: str, client: str
    ) -> Ticket:
        started = time.monotonic()
        if self._kills:  # usually none at all
            self._check_kills(principal, model)
        grant = self.grant(principal)
        shaped = shape_request(
            route,
            body,
            grant.params,
            max_model_len=model.max_model_len or 2048,
            cache_salt=grant.cache_salt if model.task == "generate" else None,
        )
        reservation = Reservation(
            request_id,
            principal.tenant.id,
            principal.key.id,
            model.id,
            shaped.reserve_tokens,
            grant.quotas,
            shaped.weight,
        )
        admission = await self._admit(reservation)
        if not admission.admitted:
            raise _limit_refusal(admission, reservation)
        ticket = Ticket(
            request_id,
            principal,
            model,
            route,
            shaped,
            reservation,
            admission.lease_id,
            ratelimit_headers(admission),
            started,
            client,
            governor=self,
            artifact=self.trail.artifact_of(model.id),  # as the model's replicas announced it
        )
        self._guard(ticket)
        self.active.add(ticket)
        self._decision_seconds.observe(time.monotonic() - started)
        return ticket

    def _guard(self, ticket: Ticket) -> None:
        """Arm the ticket's drop guard: if the ticket is let go unsettled, ``_dropped`` settles it."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        view = SimpleNamespace(  # what settling and the completed record need, without the ticket itself
            request_id=ticket.request_id,
            principal=ticket.principal,
            model=ticket.model,
            route=ticket.route,
            client=ticket.client,
            shaped=ticket.shaped,
            reservation=ticket.reservation,
            lease_id=ticket.lease_id,
            started=ticket.started,
            killed_by="",
            artifact=ticket.artifact,
        )
        guard = weakref.finalize(ticket, self._dropped, view)
        guard.atexit = False
        ticket.disarm = guard.detach

    def _dropped(self, view: SimpleNamespace) -> None:
        """A ticket was garbage-collected unsettled (a bug on some path): settle it on the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._clean_up, view)
        except RuntimeError:  # the loop stopped meanwhile: its leases lapse within lease_ttl_s
            pass

    def _clean_up(self, view: SimpleNamespace) -> None:
        task = asyncio.ensure_future(self._settle_dropped(view))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _settle_dropped(self, view: SimpleNamespace) -> None:
        log.error("request %s was let go without being settled: charging its reservation", view.request_id)
        charged = Usage(view.reservation.tokens, 0)
        try:
            await self.store.settle(view.reservation, view.lease_id, charged)
        except StoreUnavailable as error:
            self._metrics.store_errors.labels("settle").inc()
            log.error("could not settle request %s: %s", view.request_id, error)
        except Exception:  # noqa: BLE001 - e.g. the store closed meanwhile: its leases lapse within lease_ttl_s
            log.exception("could not settle request %s", view.request_id)
        self.trail.completed(view, status=500, usage=None, outcome="error", charged=charged, basis="reservation")

    async def _admit(self, reservation: Reservation) -> Admission:
        try:
            return await self.store.admit(reservation, self._options.lease_ttl_s)
        except StoreUnavailable as error:
            self._metrics.store_errors.labels("admit").inc()
            if self._options.fail_open:
                log.error("governance store unavailable, admitting without limits (fail-open): %s", error)
                return Admission(True)
            log.error("governance store unavailable, refusing (fail-closed): %s", error)
            raise Refusal(
                "store_unavailable",
                "Paddock cannot check this request's limits right now (governance state store "
                "unavailable); retry later.",
                retry_after_s=5,
            ) from None

    # -- settlement --------------------------------------------------------

    async def settle(self, ticket: Ticket, usage: Usage | None) -> None:
        """Settle on the engine's usage (the whole reservation if it is unknown)."""
        if ticket.settled:
            return
        ticket.settled = True
        if ticket.disarm is not None:
            ticket.disarm()
        self.active.discard(ticket)
        charged = usage or Usage(ticket.reservation.tokens, 0)
        try:
            await self.store.settle(ticket.reservation, ticket.lease_id, charged)
        except StoreUnavailable as error:
            self._metrics.store_errors.labels("settle").inc()
            log.error("could not settle request %s: %s", ticket.request_id, error)

    # -- background --------------------------------------------------------

    async def refresh_kills(self) -> None:
        version = await self.store.kill_version()
        if version == self._kill_version:
            return
        state = await self.store.kills()
        self._kills, self._kill_version = dict(state.scopes), state.version
        for ticket in list(self.active):
            try:
                self._check_kills(ticket.principal, ticket.model)
            except Refusal as refusal:
                ticket.kill(refusal.message, refusal.detail or "all")

    async def _watch_kills(self) -> None:
        while True:
            await asyncio.sleep(self._options.kill_poll_s)
            try:
                await self.refresh_kills()
            except StoreUnavailable as error:
                self._metrics.store_errors.labels("kills").inc()
                log.warning("cannot read kill state: %s", error)
            except Exception:  # noqa: BLE001 - the watcher must outlive any bug
                log.exception("kill watcher failed")

    async def _listen_kills(self) -> None:
        """Stores with pub/sub (Redis) announce kills at once; the poll above is the fallback."""
        subscribe = getattr(self.store, "subscribe_kills", None)
        if subscribe is None:
            return
        while True:
            try:
                async for _ in subscribe():
                    await self.refresh_kills()
            except StoreUnavailable as error:
                log.warning("kill subscription lost, polling only until it is back: %s", error)
            except Exception:  # noqa: BLE001
                log.exception("kill subscription failed")
            await asyncio.sleep(1.0)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._options.lease_ttl_s / 3)
            leases = [t.lease_id for t in self.active if t.lease_id]
            try:
                await self.store.renew(leases, self._options.lease_ttl_s)
            except StoreUnavailable as error:
                self._metrics.store_errors.labels("renew").inc()
                log.warning("cannot renew %d leases: %s", len(leases), error)
            except Exception:  # noqa: BLE001
                log.exception("lease renewal failed")

    def kill_state(self) -> dict[str, dict[str, object]]:
        return dict(self._kills)

    def model_ids(self) -> list[str]:
        return list(self._models)


def _kill_message(scope: str, model: ModelConfig) -> str:
    if scope == "all":
        return "Paddock is disabled by its operators; do not retry."
    if scope.startswith("model:"):
        return f"The model `{model.id}` is disabled by its operators; do not retry."
    return "This API key is disabled by its operators; do not retry."


def _beyond_limit(kind: str, reservation: Reservation) -> str:
    """Why a request can never pass a rate limit as sent."""
    if kind == "tokens_per_minute":
        return (
            f"This request may use up to {reservation.tokens} tokens, more than your limit of "
            "tokens per minute; lower max_tokens or the prompt."
        )
    what = "requests per minute" if kind == "requests_per_minute" else "concurrent requests"
    return (
        f"This request holds {reservation.weight} prompts, and each counts as one request: more than your "
        f"limit of {what}; send fewer prompts per request."
    )


def _limit_refusal(admission: Admission, reservation: Reservation) -> Refusal:
    headers = ratelimit_headers(admission)
    kind = admission.reason or "requests_per_minute"
    if kind in _RATE_LIMITED:
        if admission.retry_after_s <= 0:  # larger than the limit itself: waiting will not help
            return Refusal(
                "rate_limited",
                _beyond_limit(kind, reservation),
                headers={**headers, "x-should-retry": "false"},
                detail=kind,
            )
        return Refusal(
            "rate_limited",
            f"Rate limit reached ({kind.replace('_', ' ')}); retry after {admission.retry_after_s:.1f}s.",
            retry_after_s=max(1, round(admission.retry_after_s + 0.499)),
            headers=headers,
            detail=kind,
        )
    period = "daily" if kind == "tokens_per_day" else "monthly"
    return Refusal(
        "insufficient_quota",
        f"You exceeded your {period} token budget (this request may use up to {reservation.tokens} tokens); "
        "lower max_tokens or wait for the budget to reset.",
        headers={**headers, "x-should-retry": "false"},
        detail=kind,
    )
