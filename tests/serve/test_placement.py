"""The Ray placement Paddock requests for one replica: actor options, placement-group bundles, strategy,
and the vLLM executor that goes with them (service/serve/placement.py, Resources in service/config/schema.py).

What vLLM 0.32 needs, read in its source: its Ray executor starts one worker actor per GPU bundle of the
current placement group (the first TP x PP bundles that have a GPU), each asking for ``num_cpus=0,
num_gpus=1`` in its bundle; its multiprocessing executor runs the workers as processes of the replica,
on the devices that process sees. tests/serve/test_placement_on_ray.py checks the same shapes on Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.config.loader import ConfigError, load_catalog_file, parse_config
from service.config.schema import ModelConfig
from service.serve.builder import model_options
from service.serve.placement import replica_placement

REPO = Path(__file__).resolve().parents[2]
BASE = {"id": "m", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"}


def model(**resources: Any) -> ModelConfig:
    return parse_config({"models": [{**BASE, "resources": resources}]}, "t").models[0]


def placement_of(m: ModelConfig) -> dict[str, Any]:
    """The deployment options that place the replica (nothing else of model_options)."""
    options = model_options(m, 30)
    keys = ("ray_actor_options", "placement_group_bundles", "placement_group_strategy")
    return {key: options[key] for key in keys if key in options}


def test_one_gpu_the_replica_holds_it() -> None:
    m = model(cpus=2, gpus=1)
    assert placement_of(m) == {"ray_actor_options": {"num_cpus": 2, "num_gpus": 1}}
    assert m.resources.executor is None  # vLLM's default for one worker: in the EngineCore process
    shared = model(cpus=1, gpus=0.5, memory="4GiB", accelerator_type="L4")
    assert placement_of(shared) == {
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.5, "memory": 4 * 2**30, "accelerator_type": "L4"}
    }


def test_tensor_parallel_on_one_node_the_replica_holds_every_gpu() -> None:
    """TP=2, defaults: one node (STRICT_PACK), vLLM's multiprocessing executor. Its workers are processes
    of the replica, so the replica actor holds both GPUs (Ray makes them visible to it); no placement group."""
    m = model(cpus=4, gpus=1, tensor_parallel_size=2, accelerator_type="H100")
    assert m.resources.strategy == "STRICT_PACK" and m.resources.executor == "mp"
    assert placement_of(m) == {"ray_actor_options": {"num_cpus": 4, "num_gpus": 2, "accelerator_type": "H100"}}


def test_tensor_parallel_with_ray_workers_the_replica_holds_no_gpu() -> None:
    """TP=2 allowed across nodes (PACK): vLLM's Ray executor, one bundle per worker; the replica actor in
    the first bundle with its CPUs and no GPU (Ray Serve LLM's shape), so worker 0 gets that bundle's GPU."""
    m = model(cpus=4, gpus=1, tensor_parallel_size=2, placement_strategy="PACK", memory="8GiB")
    assert m.resources.executor == "ray"
    assert placement_of(m) == {
        "ray_actor_options": {"num_cpus": 4, "num_gpus": 0, "memory": 8 * 2**30},
        "placement_group_bundles": [{"CPU": 4, "GPU": 1, "memory": 8 * 2**30}, {"GPU": 1}],
        "placement_group_strategy": "PACK",
    }


def test_tp8_pp2_spans_two_nodes_with_ray_workers() -> None:
    """The DeepSeek-R1 / Kimi K2 shape: 16 workers, one bundle each, PACK (a stage per 8-GPU node), the
    accelerator type in every bundle (a bundle, not the GPU-less actor, decides where a worker runs)."""
    shape = {"gpu": "H100-80GB", "gpus_per_node": 8, "nodes": 2}
    m = model(
        cpus=8, gpus=1, tensor_parallel_size=8, pipeline_parallel_size=2, gpu_shape=shape, accelerator_type="H100"
    )
    assert m.resources.strategy == "PACK" and m.resources.executor == "ray"
    gpu = {"GPU": 1, "accelerator_type:H100": 0.001}
    assert placement_of(m) == {
        "ray_actor_options": {"num_cpus": 8, "num_gpus": 0},
        "placement_group_bundles": [{"CPU": 8, **gpu}] + [gpu] * 15,
        "placement_group_strategy": "PACK",
    }


@pytest.mark.parametrize("entry", ["deepseek-r1", "kimi-k2-instruct-0905"])
def test_the_two_node_catalog_entries_get_ray_workers(entry: str) -> None:
    m = load_catalog_file(REPO / "deploy" / "models" / f"{entry}.yaml").config.models[0]
    placement = replica_placement(m.resources)
    assert m.resources.executor == "ray" and placement.strategy == "PACK"
    assert placement.actor["num_gpus"] == 0
    assert placement.bundles is not None and len(placement.bundles) == 16
    assert all(bundle["GPU"] == 1 for bundle in placement.bundles)
    assert placement.bundles[0]["CPU"] == m.resources.cpus and all("CPU" not in b for b in placement.bundles[1:])


def test_pipeline_stages_on_one_node_stay_processes_of_the_replica() -> None:
    """PP=2 with a one-node gpu_shape (or STRICT_PACK): every worker on the replica's node, multiprocessing."""
    shape = {"gpu": "H200-141GB", "gpus_per_node": 8}
    m = model(gpus=1, tensor_parallel_size=4, pipeline_parallel_size=2, gpu_shape=shape)
    assert m.resources.strategy == "STRICT_PACK" and m.resources.executor == "mp"
    assert placement_of(m) == {"ray_actor_options": {"num_cpus": 1.0, "num_gpus": 8}}
    unshaped = model(gpus=1, pipeline_parallel_size=2)  # no shape: stages may cross nodes
    assert unshaped.resources.strategy == "PACK" and unshaped.resources.executor == "ray"


def test_cpu_tensor_parallel_workers_are_processes_of_the_replica() -> None:
    """gpus: 0 (CPU bundles standing in for GPUs): vLLM's CPU backend has no Ray executor, so always
    multiprocessing on the replica's node; the replica reserves its CPUs, no GPU, no placement group."""
    m = model(cpus=2, tensor_parallel_size=2)
    assert m.resources.strategy == "STRICT_PACK" and m.resources.executor == "mp"
    assert placement_of(m) == {"ray_actor_options": {"num_cpus": 2, "num_gpus": 0}}
    stages = model(cpus=2, pipeline_parallel_size=2)  # on CPUs, stages too stay on the replica's node
    assert stages.resources.strategy == "STRICT_PACK" and stages.resources.executor == "mp"


def test_ray_serve_accepts_every_shape() -> None:
    """Ray Serve's own check: the replica actor's resources fit the first bundle (else it refuses the
    deployment). The old shape passed it too: the actor's GPU *was* in the first bundle, vLLM's worker 0 was not."""
    from service.serve.deployments import ModelServer

    shape = {"gpu": "H100-80GB", "gpus_per_node": 8, "nodes": 2}
    for m in [
        model(cpus=2, gpus=1),
        model(cpus=4, gpus=1, tensor_parallel_size=2),
        model(
            cpus=4, gpus=1, tensor_parallel_size=2, placement_strategy="PACK", memory="1GiB", accelerator_type="A100"
        ),
        model(cpus=8, gpus=1, tensor_parallel_size=8, pipeline_parallel_size=2, gpu_shape=shape),
        model(cpus=2, tensor_parallel_size=2),
    ]:
        ModelServer.options(**model_options(m, 30))  # type: ignore[attr-defined]


def test_a_cpu_replica_cannot_cross_nodes() -> None:
    """PP=2 across two Ray nodes on CPUs needs vLLM's Ray executor, which vLLM's CPU backend refuses
    (tests/engine/test_vllm_ray_on_cpu.py raises vLLM's own message): the config says so at load."""
    with pytest.raises(ConfigError) as caught:
        model(cpus=1, pipeline_parallel_size=2, placement_strategy="PACK")
    message = str(caught.value)
    assert "placement_strategy PACK lets a CPU replica's workers cross nodes" in message
    assert "current platform cpu does not support ray." in message
    with pytest.raises(ConfigError, match="CPU replica's workers cross nodes"):
        model(tensor_parallel_size=2, placement_strategy="SPREAD")


@pytest.mark.parametrize("gpus", [0.5, 2])
def test_parallel_workers_take_one_whole_gpu(gpus: float) -> None:
    with pytest.raises(ConfigError, match=f"each worker is one whole GPU, set gpus: 1 \\(not {gpus:g}\\)"):
        model(gpus=gpus, tensor_parallel_size=2)


def test_a_two_node_shape_cannot_be_strict_pack() -> None:
    shape = {"gpu": "H100-80GB", "gpus_per_node": 8, "nodes": 2}
    with pytest.raises(ConfigError, match="STRICT_PACK needs one node"):
        model(
            gpus=1, tensor_parallel_size=8, pipeline_parallel_size=2, gpu_shape=shape, placement_strategy="STRICT_PACK"
        )
