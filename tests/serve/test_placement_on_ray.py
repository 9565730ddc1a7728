"""Paddock's placement on a real two-node Ray cluster with logical GPUs: do vLLM's workers get their GPUs?

No GPU and no vLLM here: the replica is a stand-in placed as Ray Serve places one (its actor options, in
bundle 0 of its placement group, child tasks captured: ray/serve/_private/deployment_scheduler.py), and it
starts workers as vLLM 0.32's Ray executor does (vllm/v1/executor/ray_executor.py, ``_init_workers_ray``:
one actor per GPU bundle, the first TP x PP of them, ``num_cpus=0, num_gpus=1``). Ray counts logical GPUs
the same whether or not the node has any, so a worker that cannot be placed here cannot on GPUs either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from harness.processes import kill_strays
from service.config.loader import parse_config
from service.config.schema import ModelConfig
from service.serve.placement import Placement, replica_placement

GPUS_PER_NODE = 2
WAIT_S = 60.0


@ray.remote
class Worker:
    """A vLLM worker's resources, no more: where it landed and which GPU Ray gave it."""

    def where(self) -> tuple[str, list[Any]]:
        return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()


@ray.remote
class Replica:
    """A model replica: what it sees, and the workers vLLM's Ray executor would start from inside it."""

    def visible(self) -> dict[str, Any]:
        return {"gpus": ray.get_gpu_ids(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def start_workers(self, world_size: int, wait_s: float) -> tuple[list[tuple[str, list[Any]]], int]:
        pg = get_current_placement_group()
        assert pg is not None and pg.bundle_specs is not None
        gpu_bundles = [i for i, bundle in enumerate(pg.bundle_specs) if bundle.get("GPU", 0)][:world_size]
        assert len(gpu_bundles) == world_size, pg.bundle_specs
        workers = [
            Worker.options(
                num_cpus=0,
                num_gpus=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i, placement_group_capture_child_tasks=True
                ),
            ).remote()
            for i in gpu_bundles
        ]
        refs = [worker.where.remote() for worker in workers]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        placed = [ray.get(ref) for ref in refs if ref in ready]
        for worker in workers:
            ray.kill(worker)
        return placed, len(pending)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and a worker node, GPUS_PER_NODE logical GPUs each, in a temp dir of their own."""
    temp_dir = Path(tempfile.mkdtemp(prefix="pd-ray-placement-", dir="/tmp"))
    # Cluster writes its address to /tmp/ray/ray_current_cluster, where a plain `ray.init()` of anyone
    # else on this machine would find it and connect: not this one.
    original = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda *_args, **_kw: None
    cluster = Cluster()
    try:
        node = {"num_gpus": GPUS_PER_NODE, "temp_dir": str(temp_dir), "include_dashboard": False}
        cluster.add_node(num_cpus=2, **node)
        cluster.add_node(num_cpus=1, **node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray._private.utils.write_ray_address = original
        kill_strays(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def model(**resources: Any) -> ModelConfig:
    entry = {"id": "m", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "resources": resources}
    return parse_config({"models": [entry]}, "t").models[0]


def start_replica(placement: Placement) -> tuple[Any, Any]:
    """The replica actor as Ray Serve starts it: its options, in bundle 0 of its placement group."""
    if placement.bundles is None:
        return Replica.options(**placement.actor).remote(), None  # type: ignore[attr-defined]
    pg = placement_group(placement.bundles, strategy=placement.strategy or "PACK")
    ray.get(pg.ready(), timeout=WAIT_S)
    strategy = PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )
    return Replica.options(**placement.actor, scheduling_strategy=strategy).remote(), pg  # type: ignore[attr-defined]


def stop(replica: Any, pg: Any) -> None:
    ray.kill(replica)
    if pg is not None:
        remove_placement_group(pg)


def test_pipeline_stages_across_two_nodes_every_ray_worker_gets_its_gpu(cluster: Cluster) -> None:
    """TP=2 x PP=2 over two 2-GPU nodes (the TP=8 x PP=2 shape, smaller): four workers, a whole node each
    stage, the replica (no GPU) on a node of its workers."""
    shape = {"gpu": "H100-80GB", "gpus_per_node": GPUS_PER_NODE, "nodes": 2}
    m = model(cpus=0.5, gpus=1, tensor_parallel_size=2, pipeline_parallel_size=2, gpu_shape=shape)
    placement = replica_placement(m.resources)
    assert m.resources.executor == "ray" and placement.actor["num_gpus"] == 0
    replica, pg = start_replica(placement)
    try:
        assert ray.get(replica.visible.remote(), timeout=WAIT_S)["gpus"] == []
        placed, pending = ray.get(replica.start_workers.remote(4, WAIT_S), timeout=2 * WAIT_S)
        assert pending == 0 and len(placed) == 4
        per_node: dict[str, int] = {}
        for node, gpus in placed:
            assert len(gpus) == 1
            per_node[node] = per_node.get(node, 0) + 1
        assert sorted(per_node.values()) == [2, 2]  # a tensor-parallel group per node, as PACK packs them
        assert ray.get(replica.node.remote()) in per_node
    finally:
        stop(replica, pg)


def test_the_old_placement_left_vllm_s_first_worker_waiting(cluster: Cluster) -> None:
    """Paddock before: the replica held the first bundle's GPU, so vLLM's worker 0 never started (and
    vLLM's start-up waits for it without a timeout): the issue's claim, shown on Ray."""
    old = Placement(
        actor={"num_cpus": 0.5, "num_gpus": 1},
        bundles=[{"CPU": 0.5, "GPU": 1}, {"GPU": 1}],
        strategy="STRICT_PACK",
    )
    replica, pg = start_replica(old)
    try:
        assert len(ray.get(replica.visible.remote(), timeout=WAIT_S)["gpus"]) == 1
        placed, pending = ray.get(replica.start_workers.remote(2, 5.0), timeout=WAIT_S)
        assert (len(placed), pending) == (1, 1)
    finally:
        stop(replica, pg)


def test_tensor_parallel_on_one_node_the_replica_process_sees_its_gpus(cluster: Cluster) -> None:
    """TP=2 with vLLM's multiprocessing executor: the workers are processes of the replica and use the
    devices it sees, so it holds both GPUs, and Ray sets CUDA_VISIBLE_DEVICES to them (inherited by the
    EngineCore and its workers). A replica without GPUs is given no CUDA_VISIBLE_DEVICES at all: its
    processes would see every GPU of the node."""
    m = model(cpus=0.5, gpus=1, tensor_parallel_size=2)
    replica, _ = start_replica(replica_placement(m.resources))
    gpuless, _ = start_replica(Placement(actor={"num_cpus": 0, "num_gpus": 0}))
    try:
        seen = ray.get(replica.visible.remote(), timeout=WAIT_S)
        assert len(seen["gpus"]) == 2 and seen["cuda"] is not None and len(seen["cuda"].split(",")) == 2
        untouched = os.environ.get("CUDA_VISIBLE_DEVICES")  # the nodes inherit this process's environment
        assert ray.get(gpuless.visible.remote(), timeout=WAIT_S) == {"gpus": [], "cuda": untouched}
    finally:
        stop(replica, None)
        stop(gpuless, None)
