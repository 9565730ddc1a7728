"""vLLM engine arguments from one Paddock model entry."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs

from service.config.schema import ModelConfig


class EngineArgsError(ValueError):
    """An ``engine_args`` key vLLM does not know."""


def engine_args(model: ModelConfig, path: Path, otlp_traces_endpoint: str | None = None) -> AsyncEngineArgs:
    """vLLM engine arguments for one model entry (validated against vLLM's own fields)."""
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(model.engine_args) - known)
    if unknown:
        raise EngineArgsError(f"models[{model.id}].engine_args: unknown vLLM engine argument(s): {', '.join(unknown)}")
    resources = model.resources
    args: dict[str, Any] = {
        "model": str(path),
        "served_model_name": list(model.names),
        "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code,
        "max_model_len": model.max_model_len,
        "quantization": model.quantization,
        "tokenizer_mode": model.tokenizer_mode,
        "tensor_parallel_size": resources.tensor_parallel_size,
        "pipeline_parallel_size": resources.pipeline_parallel_size,
        "enable_expert_parallel": resources.enable_expert_parallel,
        "runner": "pooling" if model.task == "embed" else "generate",
        # As `vllm serve --reasoning-parser` does: structured outputs then constrain the answer after the
        # reasoning, not the reasoning itself (unless structured_outputs_config.enable_in_reasoning).
        "reasoning_parser": model.reasoning_parser or "",
        "enforce_eager": enforce_eager(model),
        "disable_log_stats": False,
    }
    if resources.executor is not None:  # processes of the replica on its node, or Ray actors in its bundles
        args["distributed_executor_backend"] = resources.executor
    if model.kv_cache_memory is not None:
        args["kv_cache_memory_bytes"] = int(model.kv_cache_memory)
    elif model.task == "embed":
        args["kv_cache_memory_bytes"] = 64 * 1024 * 1024
    if otlp_traces_endpoint:
        args["otlp_traces_endpoint"] = otlp_traces_endpoint
    args.update({key: _typed(key, value) for key, value in model.engine_args.items()})
    return AsyncEngineArgs(**args)


def enforce_eager(model: ModelConfig) -> bool:
    """Eager (no torch.compile, no CUDA graphs) unless the replica has GPUs; the entry's ``enforce_eager`` pins it.

    ``engine_args.enforce_eager``, where an entry sets it instead, still overrides this (as any engine arg does).
    """
    if model.enforce_eager is not None:
        return model.enforce_eager
    return model.resources.gpus == 0


def engine_env(model: ModelConfig, cores: Iterable[int], environ: Mapping[str, str]) -> dict[str, str]:
    """Environment the engine's processes need beyond the arguments: on CPUs with several workers, each
    worker's OpenMP cores (``VLLM_CPU_OMP_THREADS_BIND``, ``|`` between ranks) unless ``environ`` sets them.

    ``cores`` are the ones this process may run on (its affinity), split evenly between the workers. Ray
    counts CPUs but pins none; vLLM's own ``auto`` binding gives each worker a NUMA node and refuses a
    host with fewer nodes than workers.
    """
    resources = model.resources
    workers = resources.gpu_workers
    if resources.gpus > 0 or workers == 1 or "VLLM_CPU_OMP_THREADS_BIND" in environ:
        return {}
    allowed = sorted(cores)
    if len(allowed) < workers:
        raise EngineArgsError(
            f"models[{model.id}]: {workers} CPU workers (tensor x pipeline parallel) need at least {workers} cores, "
            f"this process may run on {len(allowed)} ({allowed}); or set VLLM_CPU_OMP_THREADS_BIND"
        )
    share, extra = divmod(len(allowed), workers)
    groups, start = [], 0
    for rank in range(workers):
        size = share + (1 if rank < extra else 0)
        groups.append(",".join(str(core) for core in allowed[start : start + size]))
        start += size
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(groups)}


def _typed(key: str, value: Any) -> Any:
    """A mapping given for a dataclass-typed argument (e.g. ``structured_outputs_config``) as that dataclass."""
    kind = _FIELD_TYPES.get(key)
    if not isinstance(value, dict) or not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        return value
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise EngineArgsError(f"engine_args.{key}: unknown field(s): {', '.join(unknown)}")
    return kind(**value)


_FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in dataclasses.fields(AsyncEngineArgs)}
