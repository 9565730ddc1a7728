"""The autoscaling policy's arithmetic and the Serve options built from the config."""

from __future__ import annotations

from types import SimpleNamespace

from service.config.loader import parse_config
from service.serve.autoscaling import INFLIGHT_METRIC, inflight_policy
from service.serve.builder import POLICY, deployment_name, model_options


def ctx(
    per_replica: dict[str, float], handle_requests: float = 0, target: float = 4, replicas: int = 2
) -> SimpleNamespace:
    config = SimpleNamespace(get_target_ongoing_requests=lambda: target)
    return SimpleNamespace(
        aggregated_metrics={INFLIGHT_METRIC: per_replica},
        total_num_requests=handle_requests,
        config=config,
        current_num_replicas=replicas,
    )


def test_policy_divides_inflight_by_target() -> None:
    assert inflight_policy(ctx({"a": 6, "b": 6}))[0] == 3
    assert inflight_policy(ctx({"a": 0, "b": 0}))[0] == 0
    assert inflight_policy(ctx({}, handle_requests=8))[0] == 2  # wake-ups queued at handles count too
    assert (
        inflight_policy(
            SimpleNamespace(
                aggregated_metrics=None, total_num_requests=0, config=ctx({}).config, current_num_replicas=0
            )
        )[0]
        == 0
    )


BASE = {"id": "m/x", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"}


def test_fixed_replicas_and_autoscaling_options() -> None:
    fixed = parse_config({"models": [BASE]}, "t").models[0]
    options = model_options(fixed, drain_timeout_s=30)
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["name"] == deployment_name(fixed) == "model-m_x"
    assert options["graceful_shutdown_timeout_s"] == 45
    scaled = parse_config({"models": [{**BASE, "autoscaling": {"min_replicas": 0, "max_replicas": 3}}]}, "t").models[0]
    autoscaling = model_options(scaled, 30)["autoscaling_config"]
    assert autoscaling["min_replicas"] == 0 and autoscaling["max_replicas"] == 3
    assert autoscaling["policy"] == {"policy_function": POLICY}
    assert autoscaling["downscale_to_zero_delay_s"] == 900


def test_tensor_parallel_placement_comes_from_placement_py() -> None:
    """Every shape is pinned in test_placement.py; here only that model_options carries it."""
    resources = {"gpus": 1, "cpus": 2, "tensor_parallel_size": 2, "placement_strategy": "PACK"}
    model = parse_config({"models": [{**BASE, "resources": resources}]}, "t").models[0]
    options = model_options(model, 30)
    assert options["placement_group_bundles"] == [{"CPU": 2, "GPU": 1}, {"GPU": 1}]
    assert options["placement_group_strategy"] == "PACK"
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
