"""Each tenant's configured limits and budget use, for the ``paddock_tenant_*`` gauges.

Limits come from the governance file in force; budget use (tokens in the
current UTC day and month) from the shared store, so every ingress reports
the same figures. Key-level overrides are not broken out: the gauges are per
tenant.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from service.governance.store.base import StoreUnavailable
from service.observability.metrics import TenantGauges

log = logging.getLogger(__name__)


async def refresh_tenant_gauges(governor: Any, gauges: TenantGauges, now: datetime | None = None) -> None:
    """Update ``gauges`` from ``governor``'s policy and store; keep the last figures if the store fails."""
    tenants = governor.policy.policy.tenants
    limits = {
        (tenant.id, name): float(value)
        for tenant in tenants
        for name, value in tenant.limits.model_dump(exclude_none=True).items()
    }
    today = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
    try:
        rows = await governor.store.usage(since=today[:8] + "01", until=today)
    except StoreUnavailable as error:
        governor.trail.metrics.store_errors.labels("usage").inc()
        log.warning("tenant usage not refreshed: %s", error)
        gauges.update(limits, gauges.used)
        return
    used = {(tenant.id, period): 0.0 for tenant in tenants for period in ("day", "month")}
    for row in rows:
        tokens = float(row.prompt_tokens + row.completion_tokens)
        used[row.tenant, "month"] = used.get((row.tenant, "month"), 0.0) + tokens
        if row.day == today:
            used[row.tenant, "day"] = used.get((row.tenant, "day"), 0.0) + tokens
    gauges.update(limits, used)
