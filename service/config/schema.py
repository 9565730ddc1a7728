"""The YAML service configuration: which models Paddock serves and how.

These models are plain pydantic (no environment reads): the same document is
loaded from ``paddock serve --config FILE`` and from the ``args:`` of a Ray
Serve application (``serve deploy`` or a KubeRay RayService). Unknown keys are
rejected everywhere so that a typo fails at start instead of being ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"

# Engine arguments that the config owns elsewhere: setting them through
# ``engine_args`` would bypass validation (or, for trust_remote_code, policy).
RESERVED_ENGINE_ARGS = frozenset(
    {
        "model",
        "served_model_name",
        "tokenizer",
        "revision",
        "tokenizer_revision",
        "dtype",
        "trust_remote_code",
        "kv_cache_memory_bytes",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "runner",
        "convert",
        "task",
        "distributed_executor_backend",
        "reasoning_parser",
        "quantization",
        "tokenizer_mode",
        "enable_expert_parallel",
    }
)

# Quantization formats a catalog entry may assert, by vLLM's names: MXFP4 (gpt-oss), block FP8
# (DeepSeek, Kimi, Qwen -FP8 releases), compressed-tensors (llm-compressor), AWQ and GPTQ.
Quantization = Literal["mxfp4", "fp8", "compressed-tensors", "awq", "gptq"]
# vLLM's tokenizer modes used by catalog models: mistral (tekken), deepseek_v32 (V3.2's encoder).
TokenizerMode = Literal["auto", "hf", "mistral", "deepseek_v32"]
# Whether a replica may load a model's files only if they match an operator-signed manifest (README,
# "Approved model artifacts"): refuse otherwise, serve with a warning, or not check at all.
ApprovalPolicy = Literal["required", "warn", "off"]
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HuggingFaceSource(StrictModel):
    """A model on the Hugging Face Hub, pinned to one revision."""

    hf: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="Repository id, org/name.")
    revision: str = Field(
        pattern=r"^[0-9a-f]{40}$",
        description="Pinned commit sha (40 hex digits): a branch name can change under you.",
    )


class PathSource(StrictModel):
    """A model folder already on the node (a mounted volume, a prepared cache)."""

    path: str = Field(min_length=1)


class UriSource(StrictModel):
    """A model folder in an object store, copied into the model cache at start."""

    uri: str = Field(pattern=r"^(s3|gs|gcs|az|abfs|abfss)://[^/]+/.+")


class EmbeddedSource(StrictModel):
    """One of the models shipped as PyPI packages, prepared offline."""

    embedded: Literal["smollm2-135m-instruct", "all-minilm-l6-v2"]


SOURCE_KINDS = ("hf", "path", "uri", "embedded")


def _source_kind(value: Any) -> str | None:
    """Which kind of source a raw mapping (or a model) describes, by its key."""
    if isinstance(value, dict):
        kinds = [kind for kind in SOURCE_KINDS if kind in value]
        return kinds[0] if len(kinds) == 1 else None
    for kind in SOURCE_KINDS:
        if hasattr(value, kind):
            return kind
    return None


Source = Annotated[
    Annotated[HuggingFaceSource, Tag("hf")]
    | Annotated[PathSource, Tag("path")]
    | Annotated[UriSource, Tag("uri")]
    | Annotated[EmbeddedSource, Tag("embedded")],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="source needs exactly one of: hf (with revision), path, uri, embedded",
    ),
]


class Autoscaling(StrictModel):
    """Replica autoscaling for one model (Ray Serve autoscaling)."""

    min_replicas: int = Field(default=1, ge=0, description="0 enables scale to zero.")
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(
        default=16, gt=0, description="In-flight requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=300.0, ge=0)
    scale_to_zero_delay_s: float = Field(
        default=900.0, ge=0, description="Idle time before the last replica is removed."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    @property
    def scale_to_zero(self) -> bool:
        return self.min_replicas == 0


class GpuShape(StrictModel):
    """The GPUs one replica's sizing was made for: ``nodes`` nodes (Ray pods) of ``gpus_per_node``."""

    gpu: str = Field(min_length=1, description="GPU model and memory, e.g. H100-80GB, H200-141GB.")
    gpus_per_node: int = Field(ge=1, le=16, description="GPUs of each node the replica uses.")
    nodes: int = Field(default=1, ge=1, description="Nodes (Ray worker pods) of one replica.")


class Resources(StrictModel):
    """What one replica reserves from Ray, and how its tensor- and pipeline-parallel workers are placed.

    A replica runs ``tensor_parallel_size x pipeline_parallel_size`` workers: on GPUs, one whole GPU
    each; on CPUs (``gpus: 0``), processes of the replica on its own node. Where they run follows from
    ``placement_strategy`` (``service/serve/placement.py``; docs/models.md, "Tensor and pipeline
    parallelism"): STRICT_PACK keeps them on the replica's node (vLLM's multiprocessing executor),
    PACK or SPREAD lets them cross nodes (vLLM's Ray executor, one placement-group bundle per worker).
    """

    cpus: float = Field(default=1.0, ge=0)
    gpus: float = Field(
        default=0.0, ge=0, description="GPUs of each worker: 1 when tensor_parallel_size x pipeline_parallel_size > 1."
    )
    memory: ByteSize | None = Field(default=None, description="Ray memory reservation.")
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1, description="Pipeline stages, usually one per node.")
    enable_expert_parallel: bool = Field(
        default=False, description="MoE experts sharded across the TP x PP workers instead of tensor-split."
    )
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] | None = Field(
        default=None,
        description="Unset: STRICT_PACK (one node) unless the replica spans nodes (pipeline_parallel_size > 1, "
        "or gpu_shape.nodes > 1 on GPUs), then PACK.",
    )
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type the replica must run on (e.g. H100); unset: any GPU."
    )
    gpu_shape: GpuShape | None = Field(
        default=None, description="The hardware this sizing is for (the chart sizes GPU pods from it)."
    )

    @property
    def gpu_workers(self) -> int:
        """How many workers one replica runs: tensor x pipeline parallel (GPUs, or CPU processes)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def strategy(self) -> Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"]:
        """The placement strategy in force: the field, else one node unless the replica spans nodes."""
        if self.placement_strategy is not None:
            return self.placement_strategy
        if self.gpus == 0:
            return "STRICT_PACK"
        nodes = self.gpu_shape.nodes if self.gpu_shape else (1 if self.pipeline_parallel_size == 1 else 2)
        return "STRICT_PACK" if nodes == 1 else "PACK"

    @property
    def executor(self) -> Literal["mp", "ray"] | None:
        """vLLM's distributed executor: none for one worker, processes of the replica when every worker
        shares its node (STRICT_PACK, and always on CPUs), Ray actors in the placement group otherwise."""
        if self.gpu_workers == 1:
            return None
        return "mp" if self.strategy == "STRICT_PACK" else "ray"

    @model_validator(mode="after")
    def _parallel_workers_fit(self) -> Resources:
        if self.gpu_workers == 1:
            return self
        if self.gpus > 0 and self.gpus != 1:
            raise ValueError(
                f"tensor_parallel_size x pipeline_parallel_size > 1: each worker is one whole GPU, set gpus: 1 "
                f"(not {self.gpus:g}); vLLM's Ray executor refuses a placement-group bundle of more than one GPU"
            )
        if self.gpus == 0 and self.strategy != "STRICT_PACK":
            raise ValueError(
                f"placement_strategy {self.strategy} lets a CPU replica's workers cross nodes, which needs vLLM's Ray "
                "executor, and vLLM's CPU backend has none (vLLM: 'current platform cpu does not support ray.'): "
                "a CPU replica's tensor/pipeline workers share its node; unset placement_strategy or use STRICT_PACK"
            )
        return self

    @model_validator(mode="after")
    def _shape_fits(self) -> Resources:
        shape = self.gpu_shape
        if shape is None:
            return self
        needed = self.gpu_workers * self.gpus
        if shape.gpus_per_node * shape.nodes != needed:
            raise ValueError(
                f"gpu_shape has {shape.nodes} x {shape.gpus_per_node} GPUs, the replica needs "
                f"tensor_parallel_size x pipeline_parallel_size x gpus = {needed:g}"
            )
        if shape.nodes > 1 and self.strategy == "STRICT_PACK":
            raise ValueError("gpu_shape spans several nodes: placement_strategy STRICT_PACK needs one node; use PACK")
        return self


class ModelConfig(StrictModel):
    """One served model."""

    id: str = Field(pattern=MODEL_ID_PATTERN, description="The name clients send as `model`.")
    aliases: tuple[str, ...] = ()
    source: Source
    task: Literal["generate", "embed"] = "generate"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Quantization | None = Field(
        default=None,
        description="The checkpoint's quantization. vLLM detects it; set, a checkpoint that differs fails to load.",
    )
    tokenizer_mode: TokenizerMode = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    kv_cache_memory: ByteSize | None = Field(
        default=None,
        description="KV-cache size per replica. Required on CPU hosts; on GPUs you may set "
        "engine_args.gpu_memory_utilization instead.",
    )
    trust_remote_code: bool = False
    chat_template: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    reasoning_field: Literal["reasoning_content", "reasoning"] = Field(
        default="reasoning_content",
        description="The chat message and delta field that carries the parsed reasoning: `reasoning_content` "
        "(DeepSeek's API, what most clients read) or `reasoning` (vLLM 0.32's own name).",
    )
    enforce_eager: bool | None = Field(
        default=None,
        description="Run eagerly: no torch.compile, no CUDA graphs. Unset: eager when the replica has no GPU "
        "(resources.gpus == 0), compiled with CUDA graphs when it has.",
    )
    engine_args: dict[str, Any] = Field(default_factory=dict)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    resources: Resources = Field(default_factory=Resources)
    max_ongoing_requests: int = Field(default=256, ge=1)
    routing: Literal["prefix", "least_loaded"] | None = Field(
        default=None,
        description="How the ingress picks a replica: `prefix` sends requests that share a prompt prefix to the "
        "same replica (vLLM's prefix cache), bounded by load; `least_loaded` is power of two choices on in-flight "
        "requests. Unset: least_loaded (prefix is opt-in until a real model shows its TTFT gain: docs/models.md).",
    )
    approval: ApprovalPolicy | None = Field(
        default=None, description="This model's approval policy; unset: the service's approval.policy."
    )
    signature: str | None = Field(
        default=None,
        min_length=1,
        description="The approval signature file, relative to the model folder (default model.sig) or absolute.",
    )

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not re.match(MODEL_ID_PATTERN, alias):
                raise ValueError(f"alias {alias!r} is not a valid model name")
        return aliases

    @field_validator("engine_args")
    @classmethod
    def _no_reserved_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_ENGINE_ARGS.intersection(args))
        if reserved:
            raise ValueError(f"{', '.join(reserved)} cannot be set in engine_args; use the model entry's own fields")
        return args

    @model_validator(mode="after")
    def _kv_cache_is_explicit(self) -> ModelConfig:
        if (
            self.task == "generate"
            and self.kv_cache_memory is None
            and "gpu_memory_utilization" not in self.engine_args
        ):
            raise ValueError(
                "set kv_cache_memory (e.g. 1GiB) or engine_args.gpu_memory_utilization: "
                "without it vLLM reserves most of the node's memory for one engine"
            )
        return self

    @model_validator(mode="after")
    def _enforce_eager_once(self) -> ModelConfig:
        if self.enforce_eager is not None and "enforce_eager" in self.engine_args:
            raise ValueError("set enforce_eager or engine_args.enforce_eager, not both")
        return self

    @model_validator(mode="after")
    def _prefix_routing_generates(self) -> ModelConfig:
        if self.routing == "prefix" and self.task == "embed":
            raise ValueError("routing: prefix needs a KV cache to reuse; an embed model has none (use least_loaded)")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    @property
    def routing_policy(self) -> Literal["prefix", "least_loaded"]:
        """The routing in force: the field, else least_loaded."""
        return self.routing or "least_loaded"


class IngressConfig(StrictModel):
    """Paddock's own HTTP ingress: the one OpenAI base URL for every model."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    replicas: int = Field(default=1, ge=1)
    cpus: float = Field(default=0.5, ge=0)
    max_body_bytes: ByteSize = Field(default=ByteSize(8 * 1024 * 1024), gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    upstream_read_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest a model replica may send nothing: no response head yet (a non-streamed answer "
        "arrives whole) or a pause inside a stream. Then the ingress gives up: 504, or an in-band stream error.",
    )
    drain_timeout_s: float = Field(default=30.0, ge=0)
    max_replicas_per_node: int | None = Field(
        default=None, ge=1, description="At most this many ingress replicas per Ray node (1 on a cluster)."
    )


class AdminConfig(StrictModel):
    """The admin API (kill switch, keys, usage): its own port, its own token."""

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)


class MetricsConfig(StrictModel):
    """Paddock's own Prometheus metrics: off the public API port (tenant ids are not for clients).

    Ingress replica ``k`` on a node (Ray Serve's local rank) listens on ``port + k``.
    vLLM's engine metrics and Ray's own are on each node's Ray metrics agent.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=1, le=65535)


class ApprovalConfig(StrictModel):
    """Approved model artifacts: which keys may approve a model folder, and what no longer counts."""

    policy: ApprovalPolicy | None = Field(
        default=None,
        description="The policy of every model entry without its own. Unset: required, except for embedded "
        "models (the demo), which are off.",
    )
    keys: tuple[str, ...] = Field(
        default=(), description="Public keys (PEM files, present on every node) whose approvals are trusted."
    )
    revoked: tuple[str, ...] = Field(
        default=(),
        description="Revoked key fingerprints and artifact (manifest) digests, sha256:<hex>, as "
        "`paddock models verify` prints them.",
    )
    workers: int = Field(default=4, ge=1, le=64, description="Files hashed at once.")

    @field_validator("revoked")
    @classmethod
    def _digests(cls, revoked: tuple[str, ...]) -> tuple[str, ...]:
        for digest in revoked:
            if not re.match(DIGEST_PATTERN, digest):
                raise ValueError(f"revoked entry {digest!r} is not sha256:<64 lowercase hex digits>")
        return revoked

    def policy_for(self, model: ModelConfig) -> ApprovalPolicy:
        """The model entry's own policy, else this one, else required (off for the embedded demo models)."""
        if model.approval is not None:
            return model.approval
        if self.policy is not None:
            return self.policy
        return "off" if isinstance(model.source, EmbeddedSource) else "required"


class ServiceConfig(StrictModel):
    """The whole service: one ingress, many models."""

    ingress: IngressConfig = Field(default_factory=IngressConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    models: tuple[ModelConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ServiceConfig:
        seen: dict[str, str] = {}
        for model in self.models:
            for name in model.names:
                if name in seen:
                    raise ValueError(f"model name {name!r} is used by both {seen[name]!r} and {model.id!r}")
                seen[name] = model.id
        return self

    def model_by_name(self) -> dict[str, ModelConfig]:
        """Every served name (ids and aliases) mapped to its model."""
        return {name: model for model in self.models for name in model.names}
