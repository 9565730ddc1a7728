"""Audit records: one per request (which is also its access-log line) and one per admin action.

A refused request is one record, with a ``count`` of 1; the same refusal
repeated within a window is one record with its count (``audit_aggregate.py``),
so a keyless flood cannot fill the disk with them. The metrics still count
every refusal. An admitted request's record is written in two parts linked by
its request id: the decision before the request is forwarded (so a process
killed with SIGKILL loses nothing it admitted), and the outcome — status,
tokens, latency — when it ends. No prompt or completion text unless the tenant
opted in, and then with secrets redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from service.governance.audit import UtcClock, redact
from service.governance.audit_aggregate import RefusalAggregator
from service.governance.keys import Principal
from service.governance.store.base import Usage
from service.observability.logs import CURRENT
from service.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class Writer(Protocol):
    def write(self, record: dict[str, Any], *, echo: bool = True) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _trace_id() -> str | None:
    obs = CURRENT.get()
    return obs.trace_id if obs is not None else None


def _scope_kind(scope: str | None) -> str:
    """``model:x`` -> ``model``: the bounded label of a kill scope."""
    return (scope or "all").split(":")[0]


def prompt_text(body: dict[str, Any]) -> str:
    fields = {k: body[k] for k in ("instructions", "messages", "prompt", "input") if k in body}
    return redact(json.dumps(fields, ensure_ascii=False))


def _unknown_artifact(model_id: str) -> str | None:
    return None


def _charged(usage: Usage | None, charged: Usage | None, reserved: int) -> int:
    if charged is not None:
        return charged.total
    return usage.total if usage else reserved


class AuditTrail:
    """Builds the records and writes them through one hash-chained writer.

    Request records carry ``artifact``: the manifest digest of the model files served (see
    ``models/approval.py``). The admitted record has the one the model's replicas announced; the
    completed record the one of the replica that had the request; ``None`` when not known (the policy
    is ``off``, no replica was up yet, or the request was refused).
    """

    def __init__(
        self,
        writer: Writer | None,
        metrics: ServiceMetrics,
        *,
        refusal_window_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``refusal_window_s``: repeated refusals within it are one record with a count (0: each its own)."""
        self._writer = writer
        self.metrics = metrics
        self._now = UtcClock()
        self._allowed = metrics.decisions.labels("allow", "admitted")  # every admitted request: bound once
        self.artifact_of: Callable[[str], str | None] = _unknown_artifact  # set by the ingress: its directory's view
        self.refusals = RefusalAggregator(refusal_window_s, self._write, clock=clock)

    def _write(self, record: dict[str, Any], echo: bool = True) -> None:
        if self._writer is None:
            return
        try:
            self._writer.write(record, echo=echo)
        except Exception:  # noqa: BLE001 - counted and logged; alerting watches the counter
            self.metrics.audit_write_failures.inc()
            log.exception("audit record not written: %s", record.get("request_id"))

    def refused(
        self,
        *,
        request_id: str,
        route: str,
        client: str,
        reason: str,
        detail: str | None,
        status: int,
        started: float,
        principal: Principal | None = None,
        model: str | None = None,
    ) -> None:
        self.metrics.decisions.labels("deny", reason).inc()
        tenant = principal.tenant.id if principal else None
        if reason in ("rate_limited", "insufficient_quota"):
            self.metrics.rate_limited.labels(tenant or "unknown", detail or reason).inc()
        if reason == "killed":
            self.metrics.killed.labels(_scope_kind(detail)).inc()
        self.refusals.offer(
            {
                "time": self._now(),
                "level": "info",
                "event": "request",
                "phase": "refused",
                "request_id": request_id,
                "trace_id": _trace_id(),
                "route": route,
                "client": client,
                "tenant": tenant,
                "key_id": principal.key.id if principal else None,
                "model": model,
                "artifact": None,
                "decision": "deny",
                "reason": reason,
                "detail": detail,
                "status": status,
                "latency_s": round(time.monotonic() - started, 6),
            }
        )

    def admitted(self, ticket: Any) -> None:
        self._allowed.inc()
        principal, shaped = ticket.principal, ticket.shaped
        tenant = principal.tenant
        record = {
            "time": self._now(),
            "level": "info",
            "event": "request",
            "phase": "admitted",
            "request_id": ticket.request_id,
            "trace_id": _trace_id(),
            "route": ticket.route,
            "client": ticket.client,
            "tenant": tenant.id,
            "key_id": principal.key.id,
            "model": ticket.model.id,
            "artifact": ticket.artifact,
            "decision": "allow",
            "reason": "admitted",
            "reserved_tokens": ticket.reservation.tokens,
            "stream": shaped.stream,
        }
        if tenant.audit.include_text:
            record["prompt"] = prompt_text(shaped.body)
        self._write(record, echo=False)  # the log line of the request is its completed record

    def completed(
        self,
        ticket: Any,
        *,
        status: int,
        usage: Usage | None,
        outcome: str,
        completion: str | None = None,
        charged: Usage | None = None,
        basis: str | None = None,
    ) -> None:
        """The outcome: ``usage`` as the engine reported it (``None``: none), ``charged`` as settled and why."""
        tenant, model = ticket.principal.tenant.id, ticket.model.id
        if outcome == "killed":
            self.metrics.killed.labels(_scope_kind(ticket.killed_by)).inc()
        record = {
            "time": self._now(),
            "level": "info",
            "event": "request",
            "phase": "completed",
            "request_id": ticket.request_id,
            "trace_id": _trace_id(),
            "route": ticket.route,
            "client": ticket.client,
            "tenant": tenant,
            "key_id": ticket.principal.key.id,
            "model": model,
            "artifact": ticket.artifact,
            "decision": "allow",
            "reason": "admitted",
            "stream": ticket.shaped.stream,
            "status": status,
            "outcome": outcome,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "charged_tokens": _charged(usage, charged, ticket.reservation.tokens),
            "charged_by": basis or ("usage" if usage else "reservation"),
            "latency_s": round(time.monotonic() - ticket.started, 6),
        }
        if completion is not None and ticket.principal.tenant.audit.include_text:
            record["completion"] = redact(completion)
        self._write(record)

    def admin(self, *, actor: str, action: str, target: str, before: Any, after: Any, client: str) -> None:
        self._write(
            {
                "time": self._now(),
                "level": "warning",
                "event": "admin",
                "actor": actor,
                "action": action,
                "target": target,
                "before": before,
                "after": after,
                "client": client,
            }
        )

    async def flush_refusals(self, every_s: float = 1.0) -> None:
        """Write the aggregates of refusal windows as they end, until cancelled (the governor runs this)."""
        if self.refusals.window_s <= 0:
            return
        while True:
            await asyncio.sleep(min(every_s, self.refusals.window_s))
            self.refusals.flush_due()

    def close(self) -> None:
        """Write the pending refusal aggregates, then close the writer."""
        self.refusals.flush()
        if self._writer is not None:
            self._writer.close()
