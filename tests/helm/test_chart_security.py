"""Pod Security Standards "restricted" on every pod template, and checkov with no failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import CHECKOV, Rendered, run, tool

CHECKOV_CONFIG = Path(__file__).with_name(".checkov.yaml")
# The restricted profile's allowed volume types.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pod_templates(result: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(where, pod spec, extra container securityContexts) for every pod the scenario creates."""
    found: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for doc in result.docs:
        where = f"{result.name}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            found.append((where, doc["spec"]["template"]["spec"], None))
        elif doc["kind"] == "Pod":
            found.append((where, doc["spec"], None))
        elif doc["kind"] == "RayService":
            cluster = doc["spec"]["rayClusterConfig"]
            autoscaler = (
                cluster.get("autoscalerOptions", {}).get("securityContext")
                if cluster.get("enableInTreeAutoscaling")
                else None
            )
            if cluster.get("enableInTreeAutoscaling"):
                assert autoscaler is not None, f"{where}: the autoscaler sidecar has no securityContext"
            found.append((f"{where} head", cluster["headGroupSpec"]["template"]["spec"], autoscaler))
            for group in cluster["workerGroupSpecs"]:
                found.append((f"{where} worker {group['groupName']}", group["template"]["spec"], None))
    return found


def restricted_violations(where: str, spec: dict[str, Any], sidecar: dict[str, Any] | None) -> list[str]:
    pod = spec.get("securityContext", {})
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is {kinds}")
    contexts = [
        (c["name"], c.get("securityContext", {}), c)
        for c in spec.get("containers", []) + spec.get("initContainers", [])
    ]
    if sidecar is not None:
        contexts.append(("autoscaler", sidecar, {}))
    if not spec.get("containers"):
        problems.append("no containers")
    for name, ctx, container in contexts:

        def setting(key: str, ctx: dict[str, Any] = ctx) -> Any:
            return ctx.get(key, pod.get(key))

        if setting("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if not setting("runAsUser"):
            problems.append(f"{name}: runAsUser is not a non-zero uid")
        if (setting("seccompProfile") or {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = ctx.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return [f"{where}: {p}" for p in problems]


def test_every_pod_template_is_restricted(rendered: dict[str, Rendered]) -> None:
    problems: list[str] = []
    count = 0
    for result in rendered.values():
        for where, spec, sidecar in pod_templates(result):
            count += 1
            problems += restricted_violations(where, spec, sidecar)
    assert count >= 10
    assert not problems, "\n".join(problems)


def test_the_restricted_check_can_fail(rendered: dict[str, Rendered]) -> None:
    where, spec, _ = pod_templates(next(iter(rendered.values())))[0]
    loose = copy.deepcopy(spec)
    loose["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    loose["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    loose["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = " ".join(restricted_violations(where, loose, None))
    assert "allowPrivilegeEscalation" in problems and "SYS_ADMIN" in problems and "hostPath" in problems


def test_read_only_root_has_writable_mounts(rendered: dict[str, Rendered]) -> None:
    """/tmp (Ray's /tmp/ray, HOME), the model cache and the state dir are volumes in every server pod."""
    for result in rendered.values():
        for where, spec, _ in pod_templates(result):
            if "test-api" in where:
                continue
            mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
            assert {"/tmp", "/models/cache", "/var/lib/paddock"} <= mounts, f"{where}: {mounts}"


TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def test_service_account_tokens_only_where_needed(rendered: dict[str, Rendered]) -> None:
    """No pod automounts a token; the Ray autoscaler sidecar (which calls the Kubernetes API) alone
    mounts the head's, as a projected volume no other container of the head mounts."""
    heads_with_autoscaler = 0
    for result in rendered.values():
        for where, spec, sidecar in pod_templates(result):
            assert spec.get("automountServiceAccountToken") is False, where
            projected = {v["name"]: v["projected"] for v in spec.get("volumes", []) if "projected" in v}
            token_volumes = {
                name for name, p in projected.items() if any("serviceAccountToken" in s for s in p["sources"])
            }
            for container in spec["containers"] + spec.get("initContainers", []):
                mounted = {m["name"] for m in container.get("volumeMounts", [])}
                assert not mounted & token_volumes, f"{where}: {container['name']} mounts the token"
            if sidecar is None:
                assert not token_volumes, where
                continue
            heads_with_autoscaler += 1
            cluster = result.one("RayService")["spec"]["rayClusterConfig"]
            [mount] = [m for m in cluster["autoscalerOptions"]["volumeMounts"] if m["mountPath"] == TOKEN_PATH]
            assert mount["name"] in token_volumes and mount["readOnly"] is True, where
            sources = projected[mount["name"]]["sources"]
            # What the kubelet's own kube-api-access volume holds: the token, the cluster CA, the namespace.
            assert {"serviceAccountToken", "configMap", "downwardAPI"} == {k for s in sources for k in s}
    assert heads_with_autoscaler


def failed_checks(directory: Path, extra: list[str]) -> list[str]:
    result = run(
        [tool(CHECKOV), "--config-file", CHECKOV_CONFIG, "-d", directory, "-o", "json", *extra],
        check=False,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failures = []
    for report in reports:
        assert report["check_type"] == "kubernetes"
        assert report["summary"]["passed"] > 0, "checkov checked nothing"
        for check in report["results"]["failed_checks"]:
            failures.append(f"{check['file_path']}: {check['check_id']} {check['check_name']} ({check['resource']})")
    return failures


@pytest.fixture(scope="session")
def checkov_failures(rendered_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One checkov run over every scenario with a NetworkPolicy; one over those without."""
    with_policy = tmp_path_factory.mktemp("checkov-np")
    without_policy = tmp_path_factory.mktemp("checkov-no-np")
    for path in rendered_dir.iterdir():
        target = with_policy if "kind: NetworkPolicy" in path.read_text() else without_policy
        (target / path.name).write_text(path.read_text())
    out = {"with NetworkPolicy": failed_checks(with_policy, [])}
    if any(without_policy.iterdir()):
        # Scenarios that turn networkPolicy.enabled off on purpose: CKV2_K8S_6 (pods without a
        # NetworkPolicy) is then the intended result, not a finding.
        # (A --skip-check on the command line replaces the config file's list: pass both.)
        skips = yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"] + ["CKV2_K8S_6"]
        out["without NetworkPolicy"] = failed_checks(without_policy, ["--skip-check", ",".join(skips)])
    return out


def test_checkov_passes(checkov_failures: dict[str, list[str]]) -> None:
    problems = [f"[{group}] {failure}" for group, failures in checkov_failures.items() for failure in failures]
    assert not problems, "\n".join(problems)
