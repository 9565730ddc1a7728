"""Writes Paddock's Grafana dashboards into helm/paddock/files/dashboards/ (the one copy; see deploy/grafana).

    .venv/bin/python scripts/make_dashboards.py

The panels are declared here once, as data; the JSON files are this script's
output and are committed. A test fails when they differ, and another checks
every expression with promtool and against the metrics a real stack exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "helm" / "paddock" / "files" / "dashboards"
RATE = "$__rate_interval"
M = 'model=~"$model"'
T = 'tenant=~"$tenant"'
E = 'model_name=~"$model"'  # vLLM's label for the served model


def q(quantile: float, metric: str, selector: str, by: str = "le") -> str:
    return f"histogram_quantile({quantile}, sum by ({by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def quantiles(metric: str, selector: str) -> list[tuple[str, str]]:
    return [(q(x, metric, selector), f"p{int(x * 100)}") for x in (0.5, 0.9, 0.99)]


# (title, unit, [(expr, legend)], width) per panel, rows of 24 grid units
OVERVIEW = [
    (
        "Requests per second by model",
        "reqps",
        [(f"sum by (model) (rate(paddock_requests_total{{{M},{T}}}[{RATE}]))", "{{model}}")],
        12,
    ),
    (
        "Requests per second by status",
        "reqps",
        [(f"sum by (status) (rate(paddock_requests_total{{{M},{T}}}[{RATE}]))", "{{status}}")],
        12,
    ),
    (
        "Error ratio (5xx not decided by governance)",
        "percentunit",
        [
            (
                f'sum(rate(paddock_requests_total{{status=~"5..",decision!="refused",{M}}}[{RATE}])) / clamp_min(sum(rate(paddock_requests_total{{{M}}}[{RATE}])), 1e-9)',
                "5xx ratio",
            )
        ],
        8,
    ),
    ("Time to first token (streams)", "s", quantiles("paddock_time_to_first_token_seconds", M), 8),
    ("Inter-token latency (TPOT, streams)", "s", quantiles("paddock_inter_token_latency_seconds", M), 8),
    ("End-to-end request duration", "s", quantiles("paddock_request_duration_seconds", M), 8),
    (
        "Output tokens per second by model",
        "short",
        [(f'sum by (model) (rate(paddock_tokens_total{{kind="completion",{M}}}[{RATE}]))', "{{model}}")],
        8,
    ),
    (
        "Tokens per second by tenant",
        "short",
        [(f"sum by (tenant) (rate(paddock_tokens_total{{{T}}}[{RATE}]))", "{{tenant}}")],
        8,
    ),
    (
        "Rate-limited and killed requests",
        "reqps",
        [
            (
                f"sum by (tenant, limit) (rate(paddock_rate_limited_requests_total{{{T}}}[{RATE}]))",
                "limited {{tenant}} {{limit}}",
            ),
            (f"sum by (scope) (rate(paddock_killed_requests_total[{RATE}]))", "killed ({{scope}})"),
        ],
        8,
    ),
    ("In-flight requests", "short", [(f"sum by (model) (paddock_inflight_requests{{{M},{T}}})", "{{model}}")], 8),
    (
        "Replicas: healthy vs autoscaling target",
        "short",
        [
            (
                'sum by (deployment) (ray_serve_deployment_replica_healthy{application="paddock"})',
                "healthy {{deployment}}",
            ),
            (
                'max by (deployment) (ray_serve_autoscaling_target_replicas{application="paddock"})',
                "target {{deployment}}",
            ),
        ],
        8,
    ),
    (
        "Governance decision latency",
        "s",
        [(q(x, "paddock_governance_decision_seconds", ""), f"p{int(x * 100)}") for x in (0.5, 0.99)],
        8,
    ),
]

ENGINE = [
    (
        "KV-cache usage",
        "percentunit",
        [(f"max by (model_name, ReplicaId) (ray_vllm_kv_cache_usage_perc{{{E}}})", "{{model_name}} {{ReplicaId}}")],
        12,
    ),
    (
        "Running and waiting requests",
        "short",
        [
            (f"sum by (model_name) (ray_vllm_num_requests_running{{{E}}})", "running {{model_name}}"),
            (f"sum by (model_name) (ray_vllm_num_requests_waiting{{{E}}})", "waiting {{model_name}}"),
        ],
        12,
    ),
    (
        "Prefix-cache hit rate",
        "percentunit",
        [
            (
                f"sum by (model_name) (rate(ray_vllm_prefix_cache_hits_total{{{E}}}[{RATE}])) / clamp_min(sum by (model_name) (rate(ray_vllm_prefix_cache_queries_total{{{E}}}[{RATE}])), 1e-9)",
                "{{model_name}}",
            )
        ],
        8,
    ),
    (
        "Preemptions per second",
        "short",
        [(f"sum by (model_name) (rate(ray_vllm_request_num_preemptions_sum{{{E}}}[{RATE}]))", "{{model_name}}")],
        8,
    ),
    (
        "Engine tokens per second",
        "short",
        [
            (f"sum by (model_name) (rate(ray_vllm_prompt_tokens_total{{{E}}}[{RATE}]))", "prompt {{model_name}}"),
            (
                f"sum by (model_name) (rate(ray_vllm_generation_tokens_total{{{E}}}[{RATE}]))",
                "generation {{model_name}}",
            ),
        ],
        8,
    ),
    ("Engine time to first token", "s", quantiles("ray_vllm_time_to_first_token_seconds", E), 8),
    ("Engine inter-token latency (TPOT)", "s", quantiles("ray_vllm_inter_token_latency_seconds", E), 8),
    ("Engine end-to-end latency", "s", quantiles("ray_vllm_e2e_request_latency_seconds", E), 8),
    ("Engine queue time", "s", quantiles("ray_vllm_request_queue_time_seconds", E), 12),
    (
        "Engine prefill and decode time (p90)",
        "s",
        [
            (q(0.9, "ray_vllm_request_prefill_time_seconds", E), "prefill"),
            (q(0.9, "ray_vllm_request_decode_time_seconds", E), "decode"),
        ],
        12,
    ),
]


def vs_limit(used: str, limit: str, legend: str) -> list[tuple[str, str]]:
    return [
        (used, f"{legend} {{{{tenant}}}}"),
        (f'max by (tenant) (paddock_tenant_limit{{limit="{limit}",{T}}})', "limit {{tenant}}"),
    ]


def budget(period: str, limit: str) -> str:
    used = f'max by (tenant) (paddock_tenant_budget_used_tokens{{period="{period}",{T}}})'
    return f'{used} / max by (tenant) (paddock_tenant_limit{{limit="{limit}",{T}}})'


GOVERNANCE = [
    (
        "Tokens per minute vs limit",
        "short",
        vs_limit(f"sum by (tenant) (rate(paddock_tokens_total{{{T}}}[1m])) * 60", "tokens_per_minute", "used"),
        12,
    ),
    (
        "Requests per minute vs limit",
        "short",
        vs_limit(
            f'sum by (tenant) (rate(paddock_requests_total{{decision="admitted",{T}}}[1m])) * 60',
            "requests_per_minute",
            "admitted",
        ),
        12,
    ),
    (
        "Concurrent requests vs limit",
        "short",
        vs_limit(f"sum by (tenant) (paddock_inflight_requests{{{T}}})", "max_concurrent_requests", "in flight"),
        8,
    ),
    ("Daily token budget used", "percentunit", [(budget("day", "tokens_per_day"), "{{tenant}}")], 8),
    ("Monthly token budget used", "percentunit", [(budget("month", "tokens_per_month"), "{{tenant}}")], 8),
    (
        "Refusals by reason",
        "reqps",
        [(f'sum by (reason) (rate(paddock_governance_decisions_total{{decision="deny"}}[{RATE}]))', "{{reason}}")],
        8,
    ),
    (
        "Rate-limited by tenant and limit",
        "reqps",
        [
            (
                f"sum by (tenant, limit) (rate(paddock_rate_limited_requests_total{{{T}}}[{RATE}]))",
                "{{tenant}} {{limit}}",
            )
        ],
        8,
    ),
    (
        "Killed requests by scope",
        "reqps",
        [(f"sum by (scope) (rate(paddock_killed_requests_total[{RATE}]))", "{{scope}}")],
        8,
    ),
    (
        "Policy reloads",
        "short",
        [("sum by (result) (increase(paddock_governance_policy_reloads_total[1h]))", "{{result}}")],
        8,
    ),
    (
        "State store errors",
        "short",
        [(f"sum by (operation) (rate(paddock_governance_store_errors_total[{RATE}]))", "{{operation}}")],
        8,
    ),
    ("Audit write failures", "short", [("sum(increase(paddock_audit_write_failures_total[1h]))", "failures (1h)")], 8),
]

DASHBOARDS = {
    "paddock-overview": ("Paddock / Service overview", OVERVIEW),
    "paddock-engine": ("Paddock / Engine (vLLM)", ENGINE),
    "paddock-governance": ("Paddock / Governance", GOVERNANCE),
}


def variable(name: str, query: str) -> dict[str, object]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]], pos: dict[str, int]) -> dict[str, object]:
    return {
        "id": index,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": pos,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid: str, title: str, panels: list[tuple[str, str, list[tuple[str, str]], int]]) -> dict[str, object]:
    laid_out, x, y = [], 0, 0
    for index, (panel_title, unit, targets, width) in enumerate(panels, start=1):
        if x + width > 24:
            x, y = 0, y + 8
        laid_out.append(panel(index, panel_title, unit, targets, {"x": x, "y": y, "w": width, "h": 8}))
        x += width
    label = "model_name" if uid == "paddock-engine" else "model"
    source = "ray_vllm_num_requests_running" if uid == "paddock-engine" else "paddock_requests_total"
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
        variable("model", f"label_values({source}, {label})"),
    ]
    if uid != "paddock-engine":
        variables.append(variable("tenant", "label_values(paddock_requests_total, tenant)"))
    return {
        "uid": uid,
        "title": title,
        "tags": ["paddock"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": variables},
        "panels": laid_out,
    }


def render() -> dict[str, str]:
    return {
        f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        for uid, (title, panels) in DASHBOARDS.items()
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
