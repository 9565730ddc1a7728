"""KubeRay and Kubernetes specifics of the pods (issue 16, item 8): what KubeRay 1.7 accepts
(idleTimeoutSeconds and autoscaler v2, the upgrade strategies), the head's disruption protection,
the worker probe's path, runtimeClassName, ephemeral-storage requests, the Hugging Face token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_tools import APPROVAL_KEYS, Rendered, helm_template, parse
from test_chart_crds import errors

RAY = ["--set", "mode=rayservice"]
INCREMENTAL = RAY + [
    "--set", "rayService.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",
    "--set", "rayService.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=istio",
    "--set", "rayService.upgradeStrategy.clusterUpgradeOptions.stepSizePercent=25",
    "--set", "rayService.upgradeStrategy.clusterUpgradeOptions.intervalSeconds=60",
]  # fmt: skip
IDLE_GROUP = json.dumps(
    [{"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2, "idleTimeoutSeconds": 300}]
)


def kuberay_rejections(service: dict[str, Any]) -> list[str]:
    """KubeRay 1.7.0's ValidateRayServiceSpec rules the chart's values reach
    (ray-operator/controllers/ray/utils/validation.go: validateWorkerGroupIdleTimeout,
    the upgrade type check, ValidateClusterUpgradeOptions)."""
    spec = service["spec"]
    cluster = spec["rayClusterConfig"]
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    v2 = (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
    found = []
    for group in cluster["workerGroupSpecs"]:
        if group.get("idleTimeoutSeconds") is not None and not v2:
            found.append(
                f"worker group {group['groupName']}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled"
            )
    upgrade = spec.get("upgradeStrategy") or {}
    kind = upgrade.get("type")
    if kind not in (None, "None", "NewCluster", "NewClusterWithIncrementalUpgrade"):
        found.append(f"Spec.UpgradeStrategy.Type value {kind} is invalid")
    if kind == "NewClusterWithIncrementalUpgrade":
        options = upgrade.get("clusterUpgradeOptions")
        if not autoscaling:
            found.append("Ray Autoscaler is required for NewClusterWithIncrementalUpgrade")
        elif options is None:
            found.append("ClusterUpgradeOptions are required for NewClusterWithIncrementalUpgrade")
        else:
            surge, step = options.get("maxSurgePercent", 100), options.get("stepSizePercent")
            if step is None or not 0 <= step <= 100 or step > surge:
                found.append("stepSizePercent")
            if not options.get("intervalSeconds", 0) > 0:
                found.append("intervalSeconds must be greater than 0")
            if not options.get("gatewayClassName"):
                found.append("gatewayClassName is required for NewClusterWithIncrementalUpgrade")
    return found


def test_kuberay_rules_catch_what_kuberay_rejects() -> None:
    """The mirror of KubeRay's rules is not vacuous: the chart's old output (idleTimeoutSeconds
    without a version) and a bare incremental upgrade are rejected by it."""
    service = parse("ray", helm_template([], RAY).stdout).one("RayService")
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["idleTimeoutSeconds"] = 60
    service["spec"]["upgradeStrategy"] = {"type": "NewClusterWithIncrementalUpgrade"}
    problems = " ".join(kuberay_rejections(service))
    assert "autoscaler v2 is not enabled" in problems and "ClusterUpgradeOptions are required" in problems


def rayservices(rendered: dict[str, Rendered]) -> list[tuple[str, dict[str, Any]]]:
    return [(n, r.one("RayService")) for n, r in rendered.items() if r.of_kind("RayService")]


def test_every_rendered_rayservice_passes_kuberay_validation(rendered: dict[str, Rendered]) -> None:
    services = rayservices(rendered)
    services.append(("incremental", parse("inc", helm_template([], INCREMENTAL).stdout).one("RayService")))
    idle = RAY + [
        "--set",
        "rayService.autoscalerOptions.version=v2",
        "--set-json",
        f"rayService.workerGroups={IDLE_GROUP}",
    ]
    services.append(("idle", parse("idle", helm_template([], idle).stdout).one("RayService")))
    problems = [f"{name}: {p}" for name, service in services for p in kuberay_rejections(service)]
    assert not problems, "\n".join(problems)
    assert any(
        g.get("idleTimeoutSeconds") for _, s in services for g in s["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    )


def test_idle_timeouts_and_incremental_upgrades_match_the_crd(crds_dir: Path) -> None:
    idle = RAY + [
        "--set",
        "rayService.autoscalerOptions.version=v2",
        "--set-json",
        f"rayService.workerGroups={IDLE_GROUP}",
    ]
    for args in (INCREMENTAL, idle):
        service = parse("x", helm_template([], args).stdout).one("RayService")
        assert not errors(crds_dir, service), args
    service = parse("inc", helm_template([], INCREMENTAL).stdout).one("RayService")
    assert service["spec"]["upgradeStrategy"] == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {"gatewayClassName": "istio", "stepSizePercent": 25, "intervalSeconds": 60},
    }


REFUSED = [
    (RAY + ["--set-json", f"rayService.workerGroups={IDLE_GROUP}"], "idleTimeoutSeconds needs autoscaler v2"),
    (
        RAY
        + ["--set-json", f"rayService.workerGroups={IDLE_GROUP}", "--set", "rayService.enableInTreeAutoscaling=false"],
        "idleTimeoutSeconds needs the Ray autoscaler",
    ),
    (INCREMENTAL[:4], "needs clusterUpgradeOptions.gatewayClassName"),
    (INCREMENTAL + ["--set", "rayService.enableInTreeAutoscaling=false"], "needs the Ray autoscaler"),
    (
        INCREMENTAL + ["--set", "rayService.upgradeStrategy.clusterUpgradeOptions.maxSurgePercent=10"],
        "stepSizePercent must not exceed maxSurgePercent",
    ),
    (
        RAY + ["--set", "rayService.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=istio"],
        "clusterUpgradeOptions are for NewClusterWithIncrementalUpgrade, not NewCluster",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), REFUSED, ids=["no-v2", "no-autoscaler", "no-gateway", "inc-no-autoscaler", "surge", "stray"]
)
def test_what_kuberay_would_reject_fails_at_render(args: list[str], message: str) -> None:
    refused = helm_template([], args, check=False)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr


def test_the_head_is_protected_from_voluntary_disruption(rendered: dict[str, Rendered]) -> None:
    for name, result in rendered.items():
        if not result.of_kind("RayService"):
            assert "paddock-head" not in {p["metadata"]["name"] for p in result.of_kind("PodDisruptionBudget")}
            continue
        head = result.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        annotations = head["metadata"]["annotations"]
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false", name
        assert annotations["karpenter.sh/do-not-disrupt"] == "true", name
        pdb = result.one("PodDisruptionBudget", "paddock-head")["spec"]
        assert pdb["maxUnavailable"] == 0 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        selector = dict(pdb["selector"]["matchLabels"])
        assert selector.pop("ray.io/node-type") == "head"  # the label KubeRay gives the head pod
        assert selector.items() <= head["metadata"]["labels"].items()
    off = parse("off", helm_template([], RAY + ["--set", "rayService.head.disruptionProtection=false"]).stdout)
    assert "paddock-head" not in {p["metadata"]["name"] for p in off.of_kind("PodDisruptionBudget")}
    head = off.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert "karpenter.sh/do-not-disrupt" not in head["metadata"].get("annotations", {})


@pytest.mark.parametrize(
    ("version", "path"),
    [("2.60.0", "/api/healthz"), ("2.53.0", "/api/healthz"), ("2.52.1", "/api/local_raylet_healthz")],
)
def test_the_worker_probe_follows_the_ray_version(version: str, path: str) -> None:
    service = parse("v", helm_template([], RAY + ["--set", f"rayService.rayVersion={version}"]).stdout).one(
        "RayService"
    )
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        probe = group["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][2]
        assert f'"http://localhost:52365{path}"' in probe and "/-/healthz" in probe


def pod_specs(result: Rendered) -> list[dict[str, Any]]:
    if result.of_kind("Deployment"):
        return [result.one("Deployment")["spec"]["template"]["spec"]]
    cluster = result.one("RayService")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_runtime_class_names_reach_their_pods() -> None:
    alone = parse("alone", helm_template([], ["--set", "runtimeClassName=nvidia"]).stdout)
    assert pod_specs(alone)[0]["runtimeClassName"] == "nvidia"
    args = RAY + ["--set-json", 'models=[{"catalog":"gpt-oss-20b"}]', "--set", "rayService.head.runtimeClassName=kata"]
    args += APPROVAL_KEYS
    args += ["--set", "rayService.modelWorkerGroups.runtimeClassName=nvidia"]
    cluster = parse("ray", helm_template([], args).stdout).one("RayService")["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["template"]["spec"]["runtimeClassName"] == "kata"
    classes = {g["groupName"]: g["template"]["spec"].get("runtimeClassName") for g in cluster["workerGroupSpecs"]}
    assert classes == {"cpu": None, "gpu-gpt-oss-20b": "nvidia"}  # CPU workers keep the node's default


def test_every_server_container_requests_the_disk_of_its_empty_dirs(rendered: dict[str, Rendered]) -> None:
    """tmp + the model cache and state emptyDirs (claims excluded) = the ephemeral-storage request."""
    sizes = {"Gi": 1024, "Mi": 1}
    for name, result in rendered.items():
        for spec in pod_specs(result):
            volumes = {v["name"]: v for v in spec["volumes"]}
            expected = 0
            for volume in ("tmp", "model-cache", "state"):
                limit = volumes[volume].get("emptyDir", {}).get("sizeLimit")
                if limit is not None:
                    expected += int(limit[:-2]) * sizes[limit[-2:]]
            request = spec["containers"][0]["resources"]["requests"]["ephemeral-storage"]
            assert int(request[:-2]) * sizes[request[-2:]] == expected, name


def test_ephemeral_storage_can_be_set_and_must_be_a_quantity() -> None:
    mine = parse("mine", helm_template([], ["--set", "resources.requests.ephemeral-storage=5Gi"]).stdout)
    assert pod_specs(mine)[0]["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "5Gi"
    odd = parse(
        "odd", helm_template([], ["--set", "tmp.sizeLimit=1500M", "--set", "modelCache.emptyDirSizeLimit=512Mi"]).stdout
    )
    # 1500M = 1430.5 MiB (rounded up), + 512 MiB + the state's 2 GiB
    assert pod_specs(odd)[0]["containers"][0]["resources"]["requests"]["ephemeral-storage"] == f"{1431 + 512 + 2048}Mi"
    refused = helm_template([], ["--set", "tmp.sizeLimit=lots"], check=False)
    assert refused.returncode != 0 and "tmp.sizeLimit" in refused.stderr


@pytest.mark.parametrize("mode", ["standalone", "rayservice"])
def test_the_hugging_face_token_is_a_mounted_secret(mode: str) -> None:
    args = [
        "--set",
        f"mode={mode}",
        "--set",
        "huggingface.tokenSecret.name=hf",
        "--set",
        "huggingface.tokenSecret.key=hf-token",
    ]
    for spec in pod_specs(parse(mode, helm_template([], args).stdout)):
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN_PATH"] == {"name": "HF_TOKEN_PATH", "value": "/etc/paddock/huggingface/hf-token"}
        assert not any("secretKeyRef" in str(e.get("valueFrom", "")) and "hf" in str(e) for e in container["env"])
        [volume] = [v for v in spec["volumes"] if v["name"] == "hf-token"]
        assert volume["secret"]["secretName"] == "hf" and volume["secret"]["items"] == [
            {"key": "hf-token", "path": "hf-token"}
        ]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "hf-token"]
        assert mount == {"name": "hf-token", "mountPath": "/etc/paddock/huggingface", "readOnly": True}
    none = parse("none", helm_template([], ["--set", f"mode={mode}"]).stdout)
    assert all("HF_TOKEN_PATH" not in json.dumps(s) for s in pod_specs(none))
