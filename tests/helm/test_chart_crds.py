"""Rendered custom resources validate against their CRD schemas, with unknown fields rejected.

The schemas are KubeRay v1.7.0's and prometheus-operator's CRDs from ../shared/crds (not copied
into the project). An API server prunes unknown fields silently; here an unknown field is an error:
every object schema that lists properties gets additionalProperties: false, unless it preserves
unknown fields.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_tools import CHART, Rendered, helm_template, parse

CRD_FILES = {
    ("ray.io", "RayService"): "ray.io_rayservices.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


def strict(schema: Any) -> Any:
    """The OpenAPI v3 schema as JSON Schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_validators: dict[tuple[str, str, str], jsonschema.Draft7Validator] = {}


def validator(crds: Path, api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    key = (group, version, kind)
    if key not in _validators:
        crd = yaml.safe_load((crds / CRD_FILES[(group, kind)]).read_text())
        assert crd["spec"]["names"]["kind"] == kind
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        assert version in versions and versions[version]["served"], f"{api_version} {kind} is not served by the CRD"
        schema = strict(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
        _validators[key] = jsonschema.Draft7Validator(schema)
    return _validators[key]


def errors(crds: Path, doc: dict[str, Any]) -> list[str]:
    found = validator(crds, doc["apiVersion"], doc["kind"]).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def custom_resources(rendered: dict[str, Rendered]) -> list[tuple[str, dict[str, Any]]]:
    kinds = {kind for _, kind in CRD_FILES}
    return [(name, d) for name, r in rendered.items() for d in r.docs if d["kind"] in kinds]


def test_every_kind_is_rendered_by_some_scenario(rendered: dict[str, Rendered]) -> None:
    kinds = {d["kind"] for _, d in custom_resources(rendered)}
    assert {"RayService", "ServiceMonitor", "PodMonitor"} <= kinds
    # PrometheusRule needs rule files in files/rules/ (they come from the dashboards work); without
    # them, test_files_become_prometheus_rule_and_dashboards covers it with sample files.
    if list((CHART / "files" / "rules").glob("*.yaml")):
        assert "PrometheusRule" in kinds
    if list((CHART / "files" / "dashboards").glob("*.json")):
        dashboards = [
            d
            for r in rendered.values()
            for d in r.of_kind("ConfigMap")
            if d["metadata"]["labels"].get("grafana_dashboard") == "1"
        ]
        assert len(dashboards) >= len(list((CHART / "files" / "dashboards").glob("*.json")))


def test_custom_resources_match_their_crds(rendered: dict[str, Rendered], crds_dir: Path) -> None:
    problems = [
        f"{name}: {doc['kind']} {doc['metadata']['name']}: {error}"
        for name, doc in custom_resources(rendered)
        for error in errors(crds_dir, doc)
    ]
    assert not problems, "\n".join(problems)


def test_unknown_fields_are_rejected(rendered: dict[str, Rendered], crds_dir: Path) -> None:
    """The strict schemas catch a misplaced key at every level the chart writes."""
    service = next(d for _, d in custom_resources(rendered) if d["kind"] == "RayService")
    for path in (
        ["spec"],
        ["spec", "rayClusterConfig"],
        ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec"],
        ["spec", "rayClusterConfig", "workerGroupSpecs", 0],
    ):
        bad = copy.deepcopy(service)
        node: Any = bad
        for key in path:
            node = node[key]
        node["unknownField"] = 1
        assert any("unknownField" in e for e in errors(crds_dir, bad)), path
    bad = copy.deepcopy(service)
    bad["spec"]["upgradeStrategy"]["type"] = 5
    assert errors(crds_dir, bad)


def test_files_become_prometheus_rule_and_dashboards(tmp_path: Path, crds_dir: Path) -> None:
    """Rule files and dashboards under files/ are packaged (a copy of the chart with sample files)."""
    chart = tmp_path / "paddock"
    shutil.copytree(CHART, chart)
    (chart / "files" / "rules").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "dashboards").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "rules" / "zz-sample.yaml").write_text(
        "groups:\n  - name: zz-sample\n    rules:\n"
        '      - alert: ZzSampleDown\n        expr: up{job="paddock"} == 0\n        for: 5m\n'
        "        labels: {severity: critical}\n        annotations: {summary: a sample}\n"
    )
    (chart / "files" / "dashboards" / "zz_sample.json").write_text('{"title": "zz sample", "panels": []}')
    values = ["--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboards.enabled=true"]
    result = parse("files", helm_template([], values, chart=chart).stdout)
    rule = result.one("PrometheusRule")
    assert "zz-sample" in [g["name"] for g in rule["spec"]["groups"]]
    assert not errors(crds_dir, rule)
    promtool_check(rule, tmp_path)
    dashboard = result.one("ConfigMap", "paddock-dashboard-zz-sample")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["zz_sample.json"] == '{"title": "zz sample", "panels": []}'

    (chart / "files" / "rules" / "zz-broken.yaml").write_text("groups: [\n")
    broken = helm_template([], values, chart=chart, check=False)
    assert broken.returncode != 0 and "zz-broken.yaml" in broken.stderr


def promtool_check(rule: dict[str, Any], tmp_path: Path) -> None:
    """The PrometheusRule's groups are a valid Prometheus rule file (promtool, from install-tools.sh)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run `bash scripts/install-tools.sh` (make test does)")
    path = tmp_path / f"{rule['metadata']['name']}-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_prometheus_rules_pass_promtool(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    for _, doc in custom_resources(rendered):
        if doc["kind"] == "PrometheusRule":
            promtool_check(doc, tmp_path)
