"""vLLM engine arguments from a model entry: the reasoning parser reaches the engine, typed sub-configs, eager or
CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm.config import StructuredOutputsConfig

from service.config.loader import load_catalog_file
from service.config.schema import ModelConfig
from service.engine.vllm_engine.args import EngineArgsError, engine_args, engine_env


def entry(tmp_path: Path, **fields: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {"id": "m", "source": {"path": str(tmp_path)}, "kv_cache_memory": "64MiB", **fields}
    )


def test_the_reasoning_parser_reaches_the_engine(tmp_path: Path) -> None:
    """As with `vllm serve --reasoning-parser`, structured outputs then hold the answer, not the thinking."""
    assert engine_args(entry(tmp_path, reasoning_parser="deepseek_r1"), tmp_path).reasoning_parser == "deepseek_r1"
    assert engine_args(entry(tmp_path), tmp_path).reasoning_parser == ""


def test_a_mapping_for_a_config_argument_becomes_its_dataclass(tmp_path: Path) -> None:
    model = entry(tmp_path, engine_args={"structured_outputs_config": {"enable_in_reasoning": True}})
    config = engine_args(model, tmp_path).structured_outputs_config
    assert isinstance(config, StructuredOutputsConfig) and config.enable_in_reasoning


def test_an_unknown_field_of_a_config_argument_is_refused(tmp_path: Path) -> None:
    model = entry(tmp_path, engine_args={"structured_outputs_config": {"enable_in_thinking": True}})
    with pytest.raises(EngineArgsError, match="structured_outputs_config: unknown field"):
        engine_args(model, tmp_path)


def test_the_reasoning_parser_is_not_an_engine_arg(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reasoning_parser cannot be set in engine_args"):
        entry(tmp_path, engine_args={"reasoning_parser": "qwen3"})


# --- tensor and pipeline parallelism: the executor and the engine's environment (placement: tests/serve) ---


def test_the_executor_fits_the_placement(tmp_path: Path) -> None:
    """One worker: vLLM's default. Workers on the replica's node: multiprocessing. Across nodes: Ray."""
    shape = {"gpu": "H100-80GB", "gpus_per_node": 8, "nodes": 2}
    cases = {
        None: {"gpus": 1},
        "mp": {"gpus": 1, "tensor_parallel_size": 2},
        "ray": {"gpus": 1, "tensor_parallel_size": 8, "pipeline_parallel_size": 2, "gpu_shape": shape},
    }
    for executor, resources in cases.items():
        args = engine_args(entry(tmp_path, resources=resources), tmp_path)
        assert args.distributed_executor_backend == executor, resources
    cpu = engine_args(entry(tmp_path, resources={"cpus": 2, "tensor_parallel_size": 2}), tmp_path)
    assert (cpu.distributed_executor_backend, cpu.tensor_parallel_size) == ("mp", 2)
    assert (
        engine_args(
            entry(tmp_path, resources={"gpus": 1, "tensor_parallel_size": 2, "placement_strategy": "PACK"}), tmp_path
        ).distributed_executor_backend
        == "ray"
    )


def test_cpu_workers_get_their_own_cores(tmp_path: Path) -> None:
    """vLLM's `auto` binding wants a NUMA node per CPU worker; Paddock splits the process's cores instead."""
    tp2 = entry(tmp_path, resources={"cpus": 2, "tensor_parallel_size": 2})
    assert engine_env(tp2, {1, 0}, {}) == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # this CI machine: 2 cores
    assert engine_env(tp2, range(4), {}) == {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"}
    assert engine_env(tp2, [4, 5, 6], {}) == {"VLLM_CPU_OMP_THREADS_BIND": "4,5|6"}
    assert engine_env(tp2, range(4), {"VLLM_CPU_OMP_THREADS_BIND": "0-1|2-3"}) == {}  # the operator's binding wins
    stages = entry(tmp_path, resources={"cpus": 2, "tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    assert engine_env(stages, range(8), {}) == {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3|4,5|6,7"}
    with pytest.raises(EngineArgsError, match=r"2 CPU workers .* need at least 2 cores, this process may run on 1"):
        engine_env(tp2, [3], {})


def test_one_worker_or_gpus_need_no_binding(tmp_path: Path) -> None:
    assert engine_env(entry(tmp_path), range(2), {}) == {}  # vLLM binds one CPU worker itself
    assert engine_env(entry(tmp_path, resources={"gpus": 1, "tensor_parallel_size": 2}), range(2), {}) == {}


# enforce_eager: eager (no torch.compile, no CUDA graphs) on CPU replicas, compiled with CUDA graphs on GPU ones.


def test_a_replica_without_gpus_runs_eager_by_default(tmp_path: Path) -> None:
    model = entry(tmp_path)
    assert model.enforce_eager is None and model.resources.gpus == 0
    assert engine_args(model, tmp_path).enforce_eager is True


@pytest.mark.parametrize("resources", [{"gpus": 1}, {"gpus": 0.5}, {"gpus": 1, "tensor_parallel_size": 2}])
def test_a_replica_with_gpus_uses_cuda_graphs_by_default(tmp_path: Path, resources: dict[str, object]) -> None:
    assert engine_args(entry(tmp_path, resources=resources), tmp_path).enforce_eager is False


@pytest.mark.parametrize(("gpus", "eager"), [(0, False), (0, True), (1, True), (1, False)])
def test_the_entry_pins_enforce_eager(tmp_path: Path, gpus: int, eager: bool) -> None:
    model = entry(tmp_path, enforce_eager=eager, resources={"gpus": gpus})
    assert engine_args(model, tmp_path).enforce_eager is eager


def test_engine_args_enforce_eager_still_reaches_the_engine(tmp_path: Path) -> None:
    """The catalog's older spelling, engine_args.enforce_eager, keeps working (and wins over the default)."""
    assert engine_args(entry(tmp_path, engine_args={"enforce_eager": False}), tmp_path).enforce_eager is False
    gpu = entry(tmp_path, engine_args={"enforce_eager": True}, resources={"gpus": 1})
    assert engine_args(gpu, tmp_path).enforce_eager is True


def test_enforce_eager_is_set_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="enforce_eager or engine_args.enforce_eager, not both"):
        entry(tmp_path, enforce_eager=True, engine_args={"enforce_eager": True})


def test_the_seed_gpu_models_use_cuda_graphs(tmp_path: Path) -> None:
    """Every catalog entry (deploy/models) runs on GPUs and so is compiled, with CUDA graphs."""
    catalog = sorted((Path(__file__).resolve().parents[2] / "deploy" / "models").glob("*.yaml"))
    assert catalog
    for path in catalog:
        (model,) = load_catalog_file(path).config.models
        assert model.resources.gpus >= 1, path.name
        assert engine_args(model, tmp_path).enforce_eager is False, path.name  # a folder: vLLM asks no hub
