"""Where one model replica and its tensor- and pipeline-parallel workers run: Ray actor options and bundles.

Three shapes (docs/models.md, "Tensor and pipeline parallelism"):

- one worker: the replica actor holds the model's resources (``gpus`` may be a fraction);
- every worker on the replica's node (``executor == "mp"``: STRICT_PACK, and always on CPUs): vLLM's
  multiprocessing executor runs the workers as processes of the replica, so the replica actor itself
  holds all their GPUs. Ray makes a GPU visible to a process (``CUDA_VISIBLE_DEVICES``) only when its
  worker holds it, and leaves that variable untouched for an actor without GPUs
  (``ray._private.utils.set_visible_accelerator_ids``): processes of a GPU-less replica would pick the
  node's first GPUs, whichever replica Ray gave them to. No placement group: one actor is one node;
- workers that may cross nodes (``executor == "ray"``: PACK, SPREAD): vLLM's Ray executor starts one
  Ray actor per worker, each taking one GPU of a bundle of the replica's placement group, the first
  bundles with a GPU (``vllm/v1/executor/ray_executor.py``, ``_init_workers_ray``). So: one bundle per
  worker, and the replica actor holds no GPU. It runs in the first bundle (Ray Serve places it there),
  which also carries its CPUs and memory, as Ray Serve LLM merges the replica's bundle into the first
  worker's (``ray.llm._internal.serve.core.server.llm_server``): the engine sits on a node of its
  workers. Before, the replica held that first bundle's GPU and vLLM's first worker waited for it for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.config.schema import Resources

Bundle = dict[str, float]
ACCELERATOR_HINT = 0.001  # as Ray's own accelerator_type option (and Ray Serve LLM's bundles) request it


@dataclass(frozen=True)
class Placement:
    """Ray Serve deployment options of one replica: its actor's resources and its placement group."""

    actor: dict[str, Any]
    bundles: list[Bundle] | None = None
    strategy: str | None = None

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ray_actor_options": dict(self.actor)}
        if self.bundles is not None:
            options["placement_group_bundles"] = [dict(bundle) for bundle in self.bundles]
            options["placement_group_strategy"] = self.strategy
        return options


def replica_placement(resources: Resources) -> Placement:
    """The replica's Ray resources: see the module docstring for the three shapes."""
    if resources.executor == "ray":
        return _ray_workers(resources)
    actor: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus * resources.gpu_workers}
    if resources.memory is not None:
        actor["memory"] = int(resources.memory)
    if resources.accelerator_type:
        actor["accelerator_type"] = resources.accelerator_type
    return Placement(actor)


def _ray_workers(resources: Resources) -> Placement:
    """One bundle per vLLM Ray worker, one GPU each; the replica actor (no GPU) in the first."""
    worker: Bundle = {"GPU": 1.0}
    if resources.accelerator_type:  # in every bundle: a bundle, not the actor, decides the node
        worker[f"accelerator_type:{resources.accelerator_type}"] = ACCELERATOR_HINT
    first: Bundle = {"CPU": resources.cpus, **worker}
    actor: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": 0}
    if resources.memory is not None:
        first["memory"] = actor["memory"] = int(resources.memory)
    bundles = [first, *(dict(worker) for _ in range(resources.gpu_workers - 1))]
    return Placement(actor, bundles, resources.strategy)
