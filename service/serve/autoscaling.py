"""Ray Serve autoscaling on the requests Paddock's own servers carry.

Requests reach a replica's HTTP server directly, not through Ray Serve's
request path, so Ray's ongoing-request count stays at zero. Each replica
reports its in-flight requests as a custom metric; this policy turns them
into a replica count with the same formula as Ray's default policy
(in-flight / target). Ray applies the configured upscale/downscale delays,
scale-to-zero delay and min/max bounds around it, and scales up from zero
when the ingress queues a ``wait_ready`` call on the deployment handle.

This module is pickled by value into the Serve controller: keep its imports light.
"""

from __future__ import annotations

from typing import Any

INFLIGHT_METRIC = "paddock_inflight_requests"


def inflight_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired replicas = in-flight requests (plus handle-queued ones) / target per replica."""
    per_replica = (ctx.aggregated_metrics or {}).get(INFLIGHT_METRIC, {})
    total = max(float(sum(per_replica.values())), float(ctx.total_num_requests or 0))
    target = ctx.config.get_target_ongoing_requests()
    return total / target, {}
