"""Paddock's own Prometheus metrics (``paddock_*``: snake_case, units, no colons).

Each process builds one :class:`GovernanceMetrics` on its own registry (no
global state); the admin server exposes it at ``/metrics``. Label values are
bounded: tenants and keys come from the governance file, reasons and models
from fixed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DECISION_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)


class GovernanceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "paddock_governance_decisions_total",
            "Governance decisions by outcome and reason.",
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
            "paddock_rate_limited_requests_total",
            "Requests refused by a rate, concurrency or budget limit.",
            ["tenant", "limit"],
            registry=r,
        )
        self.killed = Counter(
            "paddock_killed_requests_total",
            "Requests refused or cut short by the kill switch, by scope kind.",
            ["scope"],
            registry=r,
        )
        self.requests = Counter(
            "paddock_requests_total",
            "Finished API requests by model, tenant and HTTP status.",
            ["model", "tenant", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "paddock_tokens_total",
            "Tokens settled against budgets, by model, tenant and kind (prompt, completion).",
            ["model", "tenant", "kind"],
            registry=r,
        )
        self.store_errors = Counter(
            "paddock_governance_store_errors_total",
            "Failed calls to the governance state store, by operation.",
            ["operation"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "paddock_governance_policy_reloads_total",
            "Governance file reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.audit_write_failures = Counter(
            "paddock_audit_write_failures_total",
            "Audit records that could not be written.",
            registry=r,
        )
        self.inflight = Gauge(
            "paddock_governed_inflight_requests",
            "Admitted requests not yet settled in this process.",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
