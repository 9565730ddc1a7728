"""Every scenario installs on the node groups it is written for (issue 16, item 10).

Beyond the schemas: each pod of a scenario, at its maximum count, is placed on the nodes of
tests/helm/node_groups.yaml (requests within allocatable, node selectors and taints respected);
inside the Ray cluster, the ingresses (one per Ray node) and CPU-only models fit the CPU workers'
Ray CPUs; and each GPU model's pods hold exactly its TP x PP x gpus GPUs, of the GPU type its
gpu_shape names, as its catalog entry (deploy/models/) sizes it unless the scenario resizes it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import REPO, SCENARIOS, Rendered, helm_template, parse, service_config

from service.config.loader import load_catalog_file
from service.config.schema import ModelConfig

NODE_GROUPS: dict[str, list[dict[str, Any]]] = yaml.safe_load(Path(__file__).with_name("node_groups.yaml").read_text())
RESOURCES = ("cpu", "memory", "ephemeral-storage", "nvidia.com/gpu")
SUFFIXES = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def quantity(value: Any) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in {"", *SUFFIXES}, f"not a quantity: {value!r}"
    return float(match.group(1)) * SUFFIXES.get(match.group(2), 1)


def requests(containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """A pod's effective requests: the containers' sum, or the largest init container's if more."""
    total = dict.fromkeys(RESOURCES, 0.0)
    for container in containers:
        for name, value in container.get("resources", {}).get("requests", {}).items():
            if name in total:
                total[name] += quantity(value)
    for container in init or []:
        for name, value in container.get("resources", {}).get("requests", {}).items():
            if name in total:
                total[name] = max(total[name], quantity(value))
    return total


@dataclass
class Pod:
    name: str
    requests: dict[str, float]
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    count: int


def pod(name: str, spec: dict[str, Any], count: int, extra: list[dict[str, Any]] | None = None) -> Pod:
    return Pod(
        name,
        requests(spec["containers"] + (extra or []), spec.get("initContainers")),
        spec.get("nodeSelector", {}),
        spec.get("tolerations", []),
        count,
    )


def pods(result: Rendered) -> list[Pod]:
    """Every pod the scenario may run at once (an upgrade's second Ray cluster aside)."""
    found = [pod("helm-test", p["spec"], 1) for p in result.of_kind("Pod")]
    for deployment in result.of_kind("Deployment"):
        hpas = result.of_kind("HorizontalPodAutoscaler")
        count = hpas[0]["spec"]["maxReplicas"] if hpas else deployment["spec"]["replicas"]
        found.append(pod("standalone", deployment["spec"]["template"]["spec"], count))
    for service in result.of_kind("RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        sidecar = (
            [{"resources": cluster["autoscalerOptions"]["resources"]}] if cluster["enableInTreeAutoscaling"] else []
        )
        found.append(pod("head", cluster["headGroupSpec"]["template"]["spec"], 1, sidecar))
        for group in cluster["workerGroupSpecs"]:
            found.append(pod(group["groupName"], group["template"]["spec"], group["maxReplicas"]))
    return found


def tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint.get("value"):
            return True
    return False


def admits(group: dict[str, Any], candidate: Pod) -> bool:
    labels = group.get("labels", {})
    if any(labels.get(key) != value for key, value in candidate.node_selector.items()):
        return False
    return all(
        tolerated(t, candidate.tolerations) for t in group.get("taints", []) if t["effect"] != "PreferNoSchedule"
    )


@dataclass
class Node:
    group: str
    free: dict[str, float]
    pods: list[str] = field(default_factory=list)


def place(groups: list[dict[str, Any]], candidates: list[Pod]) -> list[str]:
    """First-fit decreasing onto the groups' nodes; returns the pods that fit nowhere."""
    nodes = [
        Node(g["name"], {r: quantity(g["allocatable"].get(r, 0)) for r in RESOURCES})
        for g in groups
        for _ in range(g["nodes"])
    ]
    by_name = {g["name"]: g for g in groups}
    unplaced = []
    order = sorted(candidates, key=lambda p: tuple(-p.requests[r] for r in ("nvidia.com/gpu", "cpu", "memory")))
    for candidate in order:
        for index in range(candidate.count):
            for node in nodes:
                fits = all(node.free[r] >= candidate.requests[r] - 1e-9 for r in RESOURCES)
                if fits and admits(by_name[node.group], candidate):
                    for r in RESOURCES:
                        node.free[r] -= candidate.requests[r]
                    node.pods.append(f"{candidate.name}#{index}")
                    break
            else:
                needs = {r: v for r, v in candidate.requests.items() if v}
                unplaced.append(f"{candidate.name}#{index} ({needs}, selector {candidate.node_selector})")
    return unplaced


def test_every_scenario_declares_its_node_groups() -> None:
    assert set(NODE_GROUPS) == set(SCENARIOS)
    for name, groups in NODE_GROUPS.items():
        for group in groups:
            assert set(group) <= {"name", "nodes", "allocatable", "labels", "taints", "gpu"}, name
            assert ("gpu" in group) == ("nvidia.com/gpu" in group["allocatable"]), f"{name} {group['name']}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_fits_the_declared_nodes(scenario: str, rendered: dict[str, Rendered]) -> None:
    unplaced = place(NODE_GROUPS[scenario], pods(rendered[scenario]))
    assert not unplaced, f"{scenario}: no node for\n" + "\n".join(unplaced)


def test_the_placement_check_can_fail(rendered: dict[str, Rendered]) -> None:
    """The same check refuses a pod too big for its nodes, a GPU pod without a GPU group, and one
    whose taints it does not tolerate."""
    general = [g for g in NODE_GROUPS["ci/rayservice-gpu"] if "gpu" not in g]
    assert any("gpu-gpt-oss-120b" in u for u in place(general, pods(rendered["ci/rayservice-gpu"])))
    small = [{**general[0], "allocatable": {**general[0]["allocatable"], "ephemeral-storage": "10Gi"}}]
    assert place(small, pods(rendered["ci/minimal"]))  # 72Gi of emptyDirs do not fit 10Gi of disk
    tainted = [{**g, "taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]} for g in general]
    assert place(tainted, pods(rendered["ci/minimal"]))


RAY_SCENARIOS = sorted(
    name
    for name, paths in SCENARIOS.items()
    if any(yaml.safe_load(p.read_text()).get("mode") == "rayservice" for p in paths)
)


@pytest.mark.parametrize("scenario", RAY_SCENARIOS)
def test_ray_replicas_fit_the_ray_nodes(scenario: str, rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """In the Ray cluster: one ingress per CPU worker, the CPU-only models' replicas (at their
    maximum) in the CPU workers' Ray CPUs, and nothing but its engine on a GPU worker. (Standalone
    pods start local Ray with enough CPUs for every replica: serve.local.logical_cpus.)"""
    result = rendered[scenario]
    config = service_config(result, tmp_path)
    groups = result.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    cpu_groups = [g for g in groups if not gpus_of(g["template"]["spec"])]
    free = [ray_cpus(g) for g in cpu_groups for _ in range(g["maxReplicas"])]  # one entry per CPU Ray node, in Ray CPUs
    ingress = config.ingress
    assert len(free) >= ingress.replicas, f"{ingress.replicas} ingresses, {len(free)} CPU nodes"
    for index in range(ingress.replicas):  # max_replicas_per_node 1: one per node
        free[index] -= ingress.cpus
    for model in [m for m in config.models if m.resources.gpus == 0]:
        for _ in range(model.autoscaling.max_replicas):
            best = max(range(len(free)), key=lambda i: free[i])
            free[best] -= model.resources.cpus
    assert min(free) >= 0, f"{scenario}: CPU workers' Ray CPUs left {free}"
    for group in [g for g in groups if gpus_of(g["template"]["spec"])]:
        [model] = [m for m in config.models if f"gpu-{m.id}" == group["groupName"]]
        assert ray_cpus(group) - model.resources.cpus < ingress.cpus, f"{group['groupName']} has room for an ingress"


def gpus_of(spec: dict[str, Any]) -> int:
    return int(requests(spec["containers"])["nvidia.com/gpu"])


def ray_cpus(group: dict[str, Any]) -> float:
    """The Ray CPUs KubeRay gives a worker: num-cpus, else the CPU limit, else the request."""
    params = group["rayStartParams"]
    if "num-cpus" in params:
        return float(params["num-cpus"])
    resources = group["template"]["spec"]["containers"][0]["resources"]
    cpu = resources.get("limits", {}).get("cpu", resources.get("requests", {}).get("cpu", 0))
    return math.ceil(quantity(cpu))


def catalog_refs(scenario: str) -> dict[str, dict[str, Any]]:
    """The scenario's `catalog:` model entries, by model id (the catalog entry's)."""
    refs = {}
    for path in SCENARIOS[scenario]:
        for entry in yaml.safe_load(path.read_text()).get("models", []):
            if "catalog" in entry:
                model = load_catalog_file(REPO / "deploy" / "models" / f"{entry['catalog']}.yaml").config.models[0]
                refs[model.id] = {"entry": model, "override": entry}
    return refs


def replica_gpus(model: ModelConfig) -> float:
    r = model.resources
    return r.tensor_parallel_size * r.pipeline_parallel_size * r.gpus


def gpu_problems(result: Rendered, groups: list[dict[str, Any]], refs: dict[str, Any], tmp_path: Path) -> list[str]:
    """What is wrong with the GPUs of the scenario's GPU models (nothing, when the list is empty)."""
    config = service_config(result, tmp_path)
    gpu_types = {g.get("gpu") for g in groups} - {None}
    problems = []
    for model in [m for m in config.models if m.resources.gpus > 0]:
        if model.id in refs and "resources" not in refs[model.id]["override"]:
            if model.resources != refs[model.id]["entry"].resources:
                problems.append(f"{model.id}: not the catalog's sizing")
        shape = model.resources.gpu_shape
        if shape is None:
            problems.append(f"{model.id} names no gpu_shape")
            continue
        if shape.nodes * shape.gpus_per_node != replica_gpus(model):
            problems.append(f"{model.id}: gpu_shape is not TP x PP x gpus")
        if shape.gpu not in gpu_types:  # the nodes its pods land on have that GPU
            problems.append(f"{model.id}: no {shape.gpu} nodes (groups have {sorted(gpu_types)})")
    if result.of_kind("RayService"):
        workers = {g["groupName"]: g for g in result.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        for model in [m for m in config.models if m.resources.gpu_shape]:
            group, shape = workers[f"gpu-{model.id}"], model.resources.gpu_shape
            assert shape is not None
            if gpus_of(group["template"]["spec"]) != shape.gpus_per_node:
                problems.append(f"{model.id}: its pods do not hold gpus_per_node GPUs")
            if group["maxReplicas"] != shape.nodes * model.autoscaling.max_replicas:
                problems.append(f"{model.id}: its group cannot reach max_replicas x nodes pods")
    else:
        pod_gpus = gpus_of(result.one("Deployment")["spec"]["template"]["spec"])
        needed = math.ceil(sum(replica_gpus(m) for m in config.models))
        if pod_gpus != needed:
            problems.append(f"the pod holds {pod_gpus} GPUs, its models need {needed}")
    return problems


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_gpu_models_get_their_tp_x_pp_gpus_of_their_type(
    scenario: str, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    problems = gpu_problems(rendered[scenario], NODE_GROUPS[scenario], catalog_refs(scenario), tmp_path)
    assert not problems, f"{scenario}: " + "; ".join(problems)


def test_the_gpu_check_can_fail(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """A TP=2 catalog model forced onto a one-GPU pod, and H100 models on A10G nodes, are caught."""
    values = tmp_path / "values.yaml"
    one_gpu = {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}
    approval = {"keysSecret": {"name": "approval-keys", "keys": ["models.pub"]}}
    values.write_text(
        yaml.safe_dump({"models": [{"catalog": "qwen3-32b"}], "resources": one_gpu, "approval": approval})
    )
    short = parse("short", helm_template([values]).stdout)
    h100 = NODE_GROUPS["ci/standalone-gpu"]
    assert "the pod holds 1 GPUs, its models need 2" in gpu_problems(short, h100, {}, tmp_path)
    a10g = [{**g, "gpu": "A10G-24GB"} if "gpu" in g else g for g in h100]
    problems = gpu_problems(rendered["ci/standalone-gpu"], a10g, catalog_refs("ci/standalone-gpu"), tmp_path)
    assert problems == ["gpt-oss-20b: no H100-80GB nodes (groups have ['A10G-24GB'])"]
