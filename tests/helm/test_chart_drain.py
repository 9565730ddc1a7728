"""The Ray worker pods' stop (issue 16, item 5): a preStop that drains the node (`paddock node drain`),
with a deadline that leaves the replicas their graceful shutdown and fits, with Ray's own SIGTERM handling,
in the pods' grace period; the head has no such hook. See docs/kubernetes.md, "Node drains"."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chart_tools import APPROVAL_KEYS, SCENARIOS, Rendered, helm_template, parse

from service.cli.main import parser
from service.config.schema import ModelConfig
from service.serve.builder import model_options

RAY = ["--set", "mode=rayservice"]


def workers(result: Rendered) -> list[dict[str, Any]]:
    return result.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def drain_deadline(group: dict[str, Any]) -> float:
    """The preStop's --deadline-s, after checking that the hook is `paddock node drain` as the CLI parses it."""
    command = ray_container(group)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["paddock", "node", "drain"], command
    args = parser().parse_args(command[1:])
    assert args.func.__module__ == "service.cli.node"
    return float(args.deadline_s)


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def replica_stop_s(drain_timeout_s: float) -> float:
    """The longest graceful_shutdown_timeout_s of the app's replicas (a model's; the ingress's is shorter)."""
    model = ModelConfig.model_validate({"id": "m", "source": {"path": "/m"}, "kv_cache_memory": "64MiB"})
    return float(model_options(model, drain_timeout_s)["graceful_shutdown_timeout_s"])


def check_drain(result: Rendered, drain_timeout_s: float) -> None:
    groups = workers(result)
    assert groups, f"{result.name}: no worker group"
    for group in groups:
        spec, container = group["template"]["spec"], ray_container(group)
        grace = spec["terminationGracePeriodSeconds"]
        deadline = drain_deadline(group)
        ray_stop = float(env(container)["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
        name = f"{result.name} {group['groupName']}"
        # Serve stops a replica by the deadline less its graceful shutdown at the latest: it must have that long.
        assert deadline >= replica_stop_s(drain_timeout_s), (name, deadline)
        # The preStop, then Ray's own SIGTERM drain and the kill of the node's processes, inside the grace period.
        assert deadline + ray_stop + 5 <= grace, (name, deadline, ray_stop, grace)


def test_every_rayservice_scenario_drains_its_workers_within_the_grace_period(
    rendered: dict[str, Rendered],
) -> None:
    found = 0
    for name, result in rendered.items():
        if not result.of_kind("RayService"):
            continue
        found += 1
        drain = 30.0
        for path in SCENARIOS[name]:
            drain = float((yaml.safe_load(path.read_text()).get("ingress") or {}).get("drain_timeout_s", drain))
        check_drain(result, drain)
    assert found, "no rayservice scenario"


def test_the_head_has_no_drain_hook() -> None:
    """The head holds GCS and the Serve controller: nothing can migrate off it, so it never drains itself."""
    result = parse("ray", helm_template([], RAY).stdout)
    head = result.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "lifecycle" not in head["containers"][0]
    assert "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S" not in env(head["containers"][0])


def test_the_deadline_follows_the_worker_grace_period() -> None:
    values = RAY + [
        "--set", "rayService.workerDrain.terminationGracePeriodSeconds=600",
        "--set", "rayService.workerDrain.rayStopSeconds=20",
    ]  # fmt: skip
    result = parse("ray", helm_template([], values).stdout)
    for group in workers(result):
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] == 600
        assert drain_deadline(group) == 580
        assert env(ray_container(group))["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "15"
    head = result.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["terminationGracePeriodSeconds"] == 75  # terminationGracePeriodSeconds: the head's own
    check_drain(result, 30.0)


def test_the_drain_can_be_turned_off() -> None:
    result = parse("ray", helm_template([], RAY + ["--set", "rayService.workerDrain.enabled=false"]).stdout)
    for group in workers(result):
        assert "lifecycle" not in ray_container(group)
        assert "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S" not in env(ray_container(group))


@pytest.mark.parametrize(
    "values",
    [
        # 60 - 10 = 50 s of deadline, under a model replica's 45 + 15 = 60 s graceful shutdown.
        ["--set", "terminationGracePeriodSeconds=60", "--set", "ingress.drain_timeout_s=45"],
        ["--set", "rayService.workerDrain.terminationGracePeriodSeconds=50"],
        ["--set", "rayService.workerDrain.rayStopSeconds=40"],
    ],
    ids=["drain-over-grace", "worker-grace", "ray-stop"],
)
def test_a_deadline_that_does_not_fit_fails_the_render(values: list[str]) -> None:
    result = helm_template([], RAY + values, check=False)
    assert result.returncode != 0, "rendered"
    assert "the preStop's drain deadline" in result.stderr, result.stderr


def test_the_chart_owns_rays_sigterm_drain_timeout() -> None:
    values = RAY + ["--set-json", 'extraEnv=[{"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": "30"}]']
    result = helm_template([], values, check=False)
    assert result.returncode != 0 and "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S" in result.stderr, result.stderr


def test_catalog_gpu_workers_drain_too() -> None:
    """modelWorkerGroups (one GPU group per catalog model) get the same hook as the CPU groups."""
    values = RAY + ["--set-json", 'models=[{"catalog": "gpt-oss-20b"}]', *APPROVAL_KEYS]
    result = parse("gpu", helm_template([], values).stdout)
    groups = workers(result)
    assert any("nvidia.com/gpu" in str(ray_container(g)["resources"]) for g in groups), groups
    check_drain(result, 30.0)
