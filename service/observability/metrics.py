"""Paddock's own Prometheus metrics (``paddock_*``: snake_case, units, no colons).

Each ingress process builds one :class:`ServiceMetrics` on its own registry (no
global state) and serves it on the metrics port (``metrics.port``), never on
the public API port: tenant ids are not for API clients. Label values are
bounded: tenants and keys come from the governance file, models from the
service config (``unknown`` for anything else), statuses, routes, reasons and
limits from fixed sets. vLLM's engine metrics and Ray's own are exported by
each node's Ray metrics agent (``ray_vllm_*``, ``ray_serve_*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

DECISION_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2, 5, 10, 20, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
STORE_OPERATIONS = ("admit", "settle", "renew", "kills", "usage", "auth")
KILL_SCOPES = ("all", "model", "tenant", "key")
NO_TENANT = "none"  # unauthenticated, or governance off
UNKNOWN_MODEL = "unknown"  # the request named no model this service serves


def paddock_version() -> str:
    try:
        return metadata.version("paddock-serve")
    except metadata.PackageNotFoundError:
        return "unknown"


class TenantGauges:
    """``paddock_tenant_limit`` and ``paddock_tenant_budget_used_tokens``, from a snapshot.

    The snapshot is refreshed (asynchronously, from the policy and the shared
    store) by whoever serves the scrape; collecting only reads it.
    """

    def __init__(self) -> None:
        self.limits: dict[tuple[str, str], float] = {}
        self.used: dict[tuple[str, str], float] = {}

    def update(self, limits: dict[tuple[str, str], float], used: dict[tuple[str, str], float]) -> None:
        self.limits, self.used = limits, used

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "paddock_tenant_limit", "Configured tenant limits (only those set).", labels=["tenant", "limit"]
        )
        for (tenant, name), value in sorted(self.limits.items()):
            limit.add_metric([tenant, name], value)
        used = GaugeMetricFamily(
            "paddock_tenant_budget_used_tokens",
            "Tokens a tenant used in the current budget period (UTC day, month), from the shared store.",
            labels=["tenant", "period"],
        )
        for (tenant, period), value in sorted(self.used.items()):
            used.add_metric([tenant, period], value)
        yield limit
        yield used


class ServiceMetrics:
    """Every ``paddock_*`` metric of one ingress process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "paddock_requests",
            "Finished API requests by model, tenant, route, HTTP status and governance decision.",
            ["model", "tenant", "route", "status", "decision"],
            registry=r,
        )
        self.tokens = Counter(
            "paddock_tokens",
            "Tokens settled by the engine's usage, by model, tenant and kind (prompt, completion).",
            ["model", "tenant", "kind"],
            registry=r,
        )
        self.duration = Histogram(
            "paddock_request_duration_seconds",
            "End-to-end request duration at the ingress (streams until their last byte).",
            ["model", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "paddock_time_to_first_token_seconds",
            "Streamed requests: from receipt at the ingress to the first token chunk sent.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "paddock_inter_token_latency_seconds",
            "Streamed requests: time between consecutive token chunks sent to the client.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "paddock_inflight_requests",
            "API requests being served by this process.",
            ["model", "tenant"],
            registry=r,
        )
        self._governance(r)
        self.tenants = TenantGauges()
        r.register(self.tenants)
        info = Gauge("paddock_build_info", "Paddock's version (always 1).", ["version"], registry=r)
        info.labels(paddock_version()).set(1)

    def _governance(self, r: CollectorRegistry) -> None:
        self.decisions = Counter(
            "paddock_governance_decisions",
            "Governance decisions by outcome (allow, deny) and reason.",
            ["decision", "reason"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "paddock_governance_decision_seconds",
            "Time to decide on an admitted request (auth, policy, one store call).",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "paddock_rate_limited_requests",
            "Requests refused by a rate, concurrency or budget limit.",
            ["tenant", "limit"],
            registry=r,
        )
        self.killed = Counter(
            "paddock_killed_requests",
            "Requests refused or cut short by the kill switch, by scope kind (all, model, tenant, key).",
            ["scope"],
            registry=r,
        )
        self.store_errors = Counter(
            "paddock_governance_store_errors",
            "Failed calls to the governance state store, by operation.",
            ["operation"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "paddock_governance_policy_reloads",
            "Governance file reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        # Known label values start at 0, so that dashboards and alerts see the series before the first event.
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation)
        for result in ("ok", "error"):
            self.policy_reloads.labels(result)
        for scope in KILL_SCOPES:
            self.killed.labels(scope)
        self.audit_write_failures = Counter(
            "paddock_audit_write_failures",
            "Audit records that could not be written.",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
