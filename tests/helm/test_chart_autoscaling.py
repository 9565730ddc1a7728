"""Scaling standalone pods on load, not CPU (issue 16, item 9): the HPA on Paddock's in-flight
requests or vLLM's queue, with the metric names the services really export."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from chart_tools import REPO, Rendered, helm_template, parse

from service.observability.metrics import ServiceMetrics
from service.serve.autoscaling import INFLIGHT_METRIC

HPA = ["--set", "autoscaling.enabled=true", "--set", "autoscaling.maxReplicas=1"]


def hpa(*args: str) -> dict[str, Any]:
    return parse("hpa", helm_template([], [*HPA, *args]).stdout).one("HorizontalPodAutoscaler")["spec"]


def paddock_gauges() -> set[str]:
    """The gauges ServiceMetrics registers (an HPA averages a level per pod, not a counter)."""
    return {family.name for family in ServiceMetrics().registry.collect() if family.type == "gauge"}


def vllm_gauges() -> set[str]:
    """vLLM's own gauge names, read from its source (importing vLLM is slow), as Ray exports them:
    ray_ prefix, ':' -> '_' (docs/observability.md)."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations
    loggers = Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py"
    names = re.findall(r'name="(vllm:[a-z_]+)"', loggers.read_text())
    return {"ray_" + name.replace(":", "_") for name in names}


def test_cpu_is_the_default_signal() -> None:
    spec = hpa()
    assert spec["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert "behavior" not in spec


@pytest.mark.parametrize(
    ("metric", "target", "exported"),
    [("inflight", "targetInflightRequests", paddock_gauges), ("queue", "targetQueuedRequests", vllm_gauges)],
)
def test_load_signals_are_pods_metrics_with_exported_names(metric: str, target: str, exported: Any) -> None:
    spec = hpa("--set", f"autoscaling.metric={metric}", "--set", f"autoscaling.{target}=7")
    [entry] = spec["metrics"]
    assert entry["type"] == "Pods"
    assert entry["pods"]["target"] == {"type": "AverageValue", "averageValue": "7"}
    name = entry["pods"]["metric"]["name"]
    assert name in exported(), f"{name} is not a metric Paddock or vLLM exports"
    if metric == "inflight":
        assert name == INFLIGHT_METRIC  # what Ray Serve's replica autoscaling reads, too
    else:
        assert name == "ray_vllm_num_requests_waiting"


def test_the_metric_names_are_real_ones() -> None:
    """The name checks above can fail: a made-up name is in neither set."""
    assert "paddock_inflight_requests" in paddock_gauges() and "paddock_requests" not in paddock_gauges()
    assert "ray_vllm_num_requests_running" in vllm_gauges() and "ray_vllm_queue_depth" not in vllm_gauges()


def test_behavior_is_passed_through(rendered: dict[str, Rendered]) -> None:
    spec = hpa("--set", "autoscaling.behavior.scaleDown.stabilizationWindowSeconds=900")
    assert spec["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 900}}
    scenario = rendered["ci/governance-monitoring"].one("HorizontalPodAutoscaler")["spec"]
    assert scenario["metrics"][0]["pods"]["metric"]["name"] == INFLIGHT_METRIC


def test_inflight_needs_paddock_metrics() -> None:
    args = [*HPA, "--set", "autoscaling.metric=inflight", "--set", "metrics.enabled=false"]
    refused = helm_template([], args, check=False)
    assert refused.returncode != 0 and "only with metrics.enabled" in refused.stderr


def test_the_documented_adapter_rules_name_the_chart_metrics() -> None:
    """docs/kubernetes.md's prometheus-adapter rules expose exactly the names the HPA asks for."""
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    block = docs[docs.index("# prometheus-adapter rules") :]
    block = block[: block.index("```")]
    for name in (INFLIGHT_METRIC, "ray_vllm_num_requests_waiting"):
        assert f'seriesQuery: \'{name}{{namespace!="",pod!=""}}\'' in block, name
