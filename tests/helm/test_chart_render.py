"""The chart lints, renders every scenario, and its output is valid Kubernetes 1.30 and 1.34."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from chart_tools import (
    CHART,
    HELM,
    KUBERNETES_VALIDATE,
    SCENARIOS,
    Rendered,
    helm_template,
    parse,
    run,
    tool,
)

# Kinds validated against the CRD schemas instead (test_chart_crds.py).
CRD_KINDS = {"RayService", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
KUBERNETES_VERSIONS = ["1.30", "1.34"]


def test_scenarios_cover_both_modes(rendered: dict[str, Rendered]) -> None:
    modes = {("RayService" if r.of_kind("RayService") else "Deployment") for r in rendered.values()}
    assert modes == {"RayService", "Deployment"}
    assert len([n for n in SCENARIOS if n.startswith("ci/")]) >= 5


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(scenario: str) -> None:
    args: list[str | Path] = [tool(HELM), "lint", "--strict", CHART, "--namespace", "paddock"]
    for path in SCENARIOS[scenario]:
        args += ["-f", path]
    result = run(args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_scenario_renders_objects(rendered: dict[str, Rendered]) -> None:
    for name, result in rendered.items():
        kinds = {d["kind"] for d in result.docs}
        assert {"Pod"} <= kinds, f"{name}: no helm test pod"
        assert kinds & {"Deployment", "RayService"}, f"{name}: no workload"
        for doc in result.docs:
            assert doc["metadata"]["namespace"] == "paddock" or doc["kind"] == "ConfigMap", (name, doc["kind"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_strict(version: str, rendered: dict[str, Rendered], tmp_path: Path) -> None:
    files = []
    for name, result in rendered.items():
        core = [d for d in result.docs if d["kind"] not in CRD_KINDS]
        path = tmp_path / (name.replace("/", "-") + ".yaml")
        path.write_text(yaml.safe_dump_all(core, sort_keys=False))
        files.append(path)
    result = run([tool(KUBERNETES_VALIDATE), "--strict", "--quiet", "-k", version, *files], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    """The validator really is strict (a guard against a silently permissive setup)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n")
    result = run([tool(KUBERNETES_VALIDATE), "--strict", "--quiet", "-k", "1.34", bad], check=False)
    assert result.returncode != 0 and "portz" in result.stdout + result.stderr


# --- bad values fail with the schema's message -----------------------------------------------

BAD_VALUES = [
    ("--set", "ingress.port=http", "ingress.port: Invalid type. Expected: integer, given: string"),
    ("--set", "ingress.porrt=8000", "Additional property porrt is not allowed"),
    ("--set", "mode=cluster", "mode"),
    ("--set", "replicaCount=-1", "replicaCount: Must be greater than or equal to 0"),
    ("--set", "governance.enabled=yes", "governance.enabled: Invalid type. Expected: boolean, given: string"),
    ("--set", "governance.stateStore.type=memcached", "governance.stateStore.type"),
    ("--set-json", 'models=[{"id":"m","source":{"path":"/m"},"max_replicas":2}]', "Additional property max_replicas"),
    ("--set-json", 'models=[{"id":"m"}]', "source is required"),
    ("--set-json", 'models=[{"id":"m","source":{"hf":"org/m","revision":"main"}}]', "models.0.source"),
    ("--set-json", 'rayService={"workerGroups":[{"groupName":"g"}]}', "replicas is required"),
    ("--set", "networkPolicy.apiFrom=everyone", "networkPolicy.apiFrom: Invalid type. Expected: array"),
]


@pytest.mark.parametrize(("flag", "value", "message"), BAD_VALUES, ids=[b[1].split("=")[0] for b in BAD_VALUES])
def test_bad_values_fail_template_with_schema_message(flag: str, value: str, message: str) -> None:
    result = helm_template([], [flag, value], check=False)
    assert result.returncode != 0, f"{value} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_bad_values_fail_lint() -> None:
    result = run([tool(HELM), "lint", "--strict", CHART, "--set", "ingress.porrt=8000"], check=False)
    assert result.returncode != 0
    assert "Additional property porrt is not allowed" in result.stdout + result.stderr


RENDER_TIME_FAILURES = [
    (["--set", "terminationGracePeriodSeconds=30"], "terminationGracePeriodSeconds (30) must exceed"),
    (["--set", "governance.stateStore.type=redis"], "governance.stateStore.redis.url is required"),
    (["--set", "governance.existingSecret=s", "--set", "governance.adminToken=t"], "governance.existingSecret is set"),
    (["--set", "mode=rayservice", "--set", "monitoring.serviceMonitor.enabled=true"], "use monitoring.podMonitor"),
    (["--set", "state.persistentVolumeClaim.create=true", "--set", "replicaCount=2"], "needs replicaCount 1"),
    (["--set", "mode=rayservice", "--set", "rayService.gcsFaultTolerance.enabled=true"], "redisAddress is required"),
    (
        ["--set", "mode=rayservice", "--set", "modelCache.persistentVolumeClaim.create=true"],
        "needs accessModes [ReadWriteMany]",
    ),
    (["--set", "mode=rayservice", "--set", "state.persistentVolumeClaim.existingClaim=x"], "is for standalone mode"),
    (["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true"], "not both"),
    (["--set", "tracing.enabled=true"], "tracing.otlpEndpoint is required"),
    (["--set", "mode=rayservice", "--set", "ingress.max_replicas_per_node=2"], "must be 1 (or null) in rayservice"),
]


@pytest.mark.parametrize(("args", "message"), RENDER_TIME_FAILURES, ids=[m for _, m in RENDER_TIME_FAILURES])
def test_inconsistent_values_fail_at_render(args: list[str], message: str) -> None:
    result = helm_template([], args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("scenario", ["ci/standalone-cpu", "ci/rayservice-gpu", "ci/minimal"])
def test_notes_render(scenario: str, tmp_path: Path) -> None:
    """NOTES.txt renders without missing values (`helm install` shows it; `helm template` cannot)."""
    chart = tmp_path / "paddock"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_zz_notes.tpl").write_text('{{- define "zz.notes" -}}\n' + notes + "\n{{- end }}\n")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: zz-notes}\ndata:\n  notes: {{ include "zz.notes" . | toJson }}\n'
    )
    result = parse(scenario, helm_template(SCENARIOS[scenario], chart=chart).stdout)
    text = result.one("ConfigMap", "zz-notes")["data"]["notes"]
    assert "<no value>" not in text and "helm test paddock" in text
    if "rayservice" in scenario:
        assert "kubectl -n paddock get rayservice paddock" in text and "svc/paddock-serve-svc" in text
    if "minimal" in scenario:
        assert "governance is OFF" in text
    else:
        assert "paddock keys create" in text


def test_kubernetes_version_floor() -> None:
    """Chart.yaml's kubeVersion: 1.30 and 1.34 render, 1.29 is refused (the preStop sleep action)."""
    for version in ("1.30.0", "1.34.0"):
        helm_template([], ["--kube-version", version])
    result = helm_template([], ["--kube-version", "1.29.0"], check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr


def test_schema_closes_every_object_it_defines() -> None:
    """values.schema.json is draft-07 and every object with listed properties rejects other keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    open_objects = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path or "(top)")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "")
    assert not open_objects
    # The chart's own values.yaml is valid against it (helm checks this too; here, independently).
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_packaged_chart_renders(tmp_path: Path) -> None:
    """`helm package` keeps what the chart needs (schema, templates, files) and the package renders."""
    run([tool(HELM), "package", CHART, "--destination", tmp_path])
    [package] = list(tmp_path.glob("paddock-*.tgz"))
    result = helm_template([], ["--set", "ingress.porrt=1"], chart=package, check=False)
    assert "Additional property porrt is not allowed" in result.stderr  # the schema is packaged
    assert parse("package", helm_template([], chart=package).stdout).one("Deployment")
