"""Pipeline stages across two Ray nodes cannot run on vLLM's CPU backend: its Ray executor refuses the CPU
platform. This calls the code that refuses, as a replica's EngineCore would, and checks that Paddock's
config error (which refuses such a CPU replica at load, before any Ray node is asked) quotes it.

Why not the real thing, a two-node Ray cluster serving a PP=2 model: on this CPU-only machine it would
start two Ray nodes and an engine to reach the same line, in vLLM's EngineCore process at start-up
(``RayDistributedExecutor._init_executor`` -> ``initialize_ray_cluster``), long after the config could say
so. The GPU placement that the same config gets is pinned in tests/serve/test_placement.py and placed on a
two-node Ray cluster in tests/serve/test_placement_on_ray.py.
"""

from __future__ import annotations

import pytest
from vllm.config import ParallelConfig
from vllm.platforms import current_platform
from vllm.v1.executor import ray_utils

from service.config.loader import ConfigError, parse_config

VLLM_MESSAGE = "current platform cpu does not support ray."


def test_vllm_refuses_its_ray_executor_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert current_platform.is_cpu() and current_platform.ray_device_key == ""
    # Inside a replica Ray is already up; skip the ray.init that would otherwise start a local cluster here.
    monkeypatch.setattr(ray_utils.ray, "is_initialized", lambda: True)
    parallel = ParallelConfig(pipeline_parallel_size=2, distributed_executor_backend="ray")
    with pytest.raises(ValueError) as caught:
        ray_utils.initialize_ray_cluster(parallel)
    assert str(caught.value) == VLLM_MESSAGE


def test_paddock_refuses_the_same_replica_at_load_with_vllm_s_words() -> None:
    entry = {
        "id": "pp2-cpu",
        "source": {"path": "/m"},
        "kv_cache_memory": "64MiB",
        "resources": {"cpus": 1, "pipeline_parallel_size": 2, "placement_strategy": "PACK"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": [entry]}, "pp2.yaml")
    assert f"(vLLM: '{VLLM_MESSAGE}')" in str(caught.value)
