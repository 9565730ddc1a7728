"""The dashboards and rules: generated from one source, checked by promtool, unit-tested alerts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.observability.promql import DASHBOARDS, FILES, ROOT, RULE_FILES, dashboard_expressions, referenced_metrics

RULE_TESTS = Path(__file__).with_name("rules")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/install-tools.sh installs it"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_dashboards
    finally:
        sys.path.pop(0)
    expected = make_dashboards.render()
    assert sorted(expected) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == expected[path.name], f"{path.name}: run scripts/make_dashboards.py"


def test_rule_files_pass_promtool_check() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """Each panel target becomes a recording rule; promtool parses and checks them all."""
    rules = [
        {"record": f"dashboard_check_{i}", "expr": expr, "labels": {"dashboard": uid, "panel": title}}
        for i, (uid, title, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_alert_rules_unit_tests() -> None:
    tests = sorted(RULE_TESTS.glob("*.test.yaml"))
    assert tests
    result = subprocess.run(
        [shutil.which("promtool") or "promtool", "test", "rules", *[t.name for t in tests]],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_the_required_annotations() -> None:
    alerts = [
        r for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"] if "alert" in r
    ]
    tested = {
        t["alertname"]
        for path in RULE_TESTS.glob("*.test.yaml")
        for case in yaml.safe_load(path.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    for alert in alerts:
        assert alert["alert"] in tested, f"{alert['alert']} has no test where it fires"
        assert alert["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description", "runbook"} <= set(alert["annotations"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_panels_are_complete(path: Path) -> None:
    board = json.loads(path.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == path.stem
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "model"}
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        assert panel["fieldConfig"]["defaults"]["unit"]


def test_only_our_names_and_real_sources() -> None:
    names = referenced_metrics()
    assert all(n.startswith(("paddock_", "ray_vllm_", "ray_serve_")) for n in names), names
    assert all(":" not in n for n in names)
    # The e2e suite checks each of these against a real Prometheus scraping a real stack.
    assert {"paddock_requests_total", "ray_vllm_kv_cache_usage_perc", "ray_serve_deployment_replica_healthy"} <= names


def test_deploy_links_point_at_the_chart_files() -> None:
    for link, target in (("grafana", "dashboards"), ("prometheus", "rules")):
        path = ROOT / "deploy" / link
        assert path.is_symlink() and path.resolve() == (FILES / target).resolve()
