"""PromQL in the dashboards and rules: every expression, and the metric names they use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "paddock" / "files"
DASHBOARDS = sorted((FILES / "dashboards").glob("*.json"))
RULE_FILES = sorted((FILES / "rules").glob("*.yaml"))
# Grafana's variables, as a recording rule would see them
VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$tenant": ".*"}
_METRIC = re.compile(r"\b((?:paddock|ray)_[a-z0-9_]+)\b")


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr with variables substituted) for every panel target."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                found.append((board["uid"], panel["title"], expr))
    return found


def rule_expressions() -> list[str]:
    return [
        rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def referenced_metrics() -> set[str]:
    """Every metric the dashboards and rules read (recording rules' own outputs excluded)."""
    exprs = [e for _, _, e in dashboard_expressions()] + rule_expressions()
    return {name for expr in exprs for name in _METRIC.findall(expr)} - recorded()
