"""The seed-model catalog (deploy/models): every entry is a one-model service config that Paddock's
own loader accepts, pinned to a commit or refused for serving with what to pin, and names parsers,
tokenizer modes and quantizations that vLLM knows."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from service.config.loader import (
    CATALOG_PLACEHOLDER_REVISION,
    ConfigError,
    load_catalog_file,
    load_config_file,
)
from service.config.schema import HuggingFaceSource, ModelConfig, Quantization, TokenizerMode

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "deploy" / "models"
ENTRIES = sorted(CATALOG.glob("*.yaml"))
SHA = re.compile(r"^[0-9a-f]{40}$")
# The seed models, by family: at least one catalog file for each.
FAMILIES = {
    "gpt-oss-20b": "openai/gpt-oss-20b",
    "gpt-oss-120b": "openai/gpt-oss-120b",
    "R1": "deepseek-ai/DeepSeek-R1",
    "R1 distill": "deepseek-ai/DeepSeek-R1-Distill-",
    "V3.x": "deepseek-ai/DeepSeek-V3.",
    "Kimi K2": "moonshotai/Kimi-K2",
    "Llama 4 Scout": "meta-llama/Llama-4-Scout",
    "Llama 4 Maverick FP8": "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
    "Mistral Small 3.x": "mistralai/Mistral-Small-3.",
    "Magistral or Mistral Large 3": ("mistralai/Magistral", "mistralai/Mistral-Large-3"),
    "Qwen3 dense": "Qwen/Qwen3-32B",
    "Qwen3 MoE": ("Qwen/Qwen3-235B-A22B", "Qwen/Qwen3-30B-A3B"),
}


def the_model(path: Path) -> ModelConfig:
    entry = load_catalog_file(path)
    assert len(entry.config.models) == 1, f"{path.name}: one model per catalog file"
    return entry.config.models[0]


def hf_source(model: ModelConfig) -> HuggingFaceSource:
    assert isinstance(model.source, HuggingFaceSource), f"{model.id}: catalog models come from the Hub"
    return model.source


def test_the_catalog_covers_the_seed_models() -> None:
    repos = [hf_source(the_model(path)).hf for path in ENTRIES]
    for family, prefixes in FAMILIES.items():
        options = (prefixes,) if isinstance(prefixes, str) else prefixes
        assert any(repo.startswith(options) for repo in repos), f"no catalog entry for {family}"


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.stem)
def test_entry_shape(path: Path) -> None:
    """Valid with the loader, file named by the model id, the HF id an alias, GPU shape that fits."""
    model = the_model(path)
    assert path.stem == model.id
    assert hf_source(model).hf in model.aliases
    resources = model.resources
    assert resources.gpu_shape is not None, f"{model.id}: say which GPUs it needs"
    assert resources.gpu_shape.gpus_per_node * resources.gpu_shape.nodes == resources.gpu_workers * resources.gpus
    assert resources.pipeline_parallel_size <= resources.gpu_shape.nodes or resources.gpu_shape.nodes == 1
    assert "gpu_memory_utilization" in model.engine_args and model.max_model_len
    one_node = resources.gpu_shape.nodes == 1
    assert resources.executor == (None if resources.gpu_workers == 1 else "mp" if one_node else "ray")


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.stem)
def test_pinned_or_refused_with_what_to_pin(path: Path) -> None:
    entry = load_catalog_file(path)
    source = hf_source(entry.config.models[0])
    if not entry.unpinned:
        assert SHA.match(source.revision) and source.revision != CATALOG_PLACEHOLDER_REVISION
        assert load_config_file(path) == entry.config  # serving takes it as it is
        return
    assert source.revision == CATALOG_PLACEHOLDER_REVISION
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert f"{path}: models[0].source.revision: {source.hf} is not pinned" in message
    assert f"git ls-remote https://huggingface.co/{source.hf} refs/heads/main" in message
    assert "History tab" in message and "40 hex digits" in message


def test_a_placeholder_revision_is_not_a_pin() -> None:
    """The raw files never carry the placeholder: a real pin, or revision null with a pin_hint."""
    for path in ENTRIES:
        source = yaml.safe_load(path.read_text())["models"][0]["source"]
        if source["revision"] is None:
            assert source["pin_hint"].strip()
        else:
            assert SHA.match(source["revision"]) and set(source["revision"]) != {"0"}
            assert "pin_hint" not in source


def test_a_pinned_source_with_a_leftover_pin_hint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    text = (CATALOG / "gpt-oss-20b.yaml").read_text()
    path.write_text(text.replace("revision: 6cee", 'pin_hint: "x", revision: 6cee'))
    with pytest.raises(ConfigError, match=r"models\[0\]\.source\.pin_hint: unknown key"):
        load_config_file(path)


def test_parsers_exist_in_vllm() -> None:
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    reasoning = set(ReasoningParserManager.list_registered())
    tools = set(ToolParserManager.tool_parsers) | set(ToolParserManager.lazy_parsers)
    for path in ENTRIES:
        model = the_model(path)
        assert model.reasoning_parser is None or model.reasoning_parser in reasoning, model.id
        assert model.tool_call_parser is None or model.tool_call_parser in tools, model.id


def test_schema_names_are_vllm_names() -> None:
    """Paddock's quantization and tokenizer-mode choices are a subset of vLLM 0.32's."""
    from vllm.config.model import TokenizerMode as VllmTokenizerMode
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    assert set(typing.get_args(Quantization)) <= set(QUANTIZATION_METHODS)
    assert set(typing.get_args(TokenizerMode)) <= set(typing.get_args(VllmTokenizerMode))


def test_engine_args_of_every_entry(tmp_path: Path) -> None:
    """Every entry maps to vLLM engine arguments vLLM accepts (parallelism, quantization, tokenizer)."""
    from service.engine.vllm_engine.args import engine_args

    for path in ENTRIES:
        model = the_model(path)
        weights = tmp_path / model.id  # a local directory: vLLM would otherwise look the path up on the Hub
        weights.mkdir()
        args = engine_args(model, weights)
        resources = model.resources
        assert args.tensor_parallel_size == resources.tensor_parallel_size
        assert args.pipeline_parallel_size == resources.pipeline_parallel_size
        assert args.enable_expert_parallel == resources.enable_expert_parallel
        assert args.quantization == model.quantization and args.tokenizer_mode == model.tokenizer_mode
        assert args.distributed_executor_backend == resources.executor


def test_serve_config_example_follows_the_catalog() -> None:
    """deploy/serve-config.yaml's Hub models carry their catalog entry's revision and parsers."""
    catalog = {hf_source(m).hf: m for m in map(the_model, ENTRIES)}
    config = load_config_file(REPO / "deploy" / "serve-config.yaml")
    hub = [m for m in config.models if isinstance(m.source, HuggingFaceSource)]
    assert hub
    for model in hub:
        entry = catalog[hf_source(model).hf]
        assert hf_source(model).revision == hf_source(entry).revision
        assert (model.reasoning_parser, model.tool_call_parser) == (entry.reasoning_parser, entry.tool_call_parser)
        assert model.quantization == entry.quantization


def test_gpu_shape_must_match_the_parallelism() -> None:
    from service.config.loader import parse_config

    base = {"id": "m", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"}
    shape = {"gpu": "H100-80GB", "gpus_per_node": 8, "nodes": 2}
    good = {"gpus": 1, "tensor_parallel_size": 8, "pipeline_parallel_size": 2, "placement_strategy": "PACK"}
    config = parse_config({"models": [{**base, "resources": {**good, "gpu_shape": shape}}]}, "x")
    assert config.models[0].resources.executor == "ray"  # its bundles: tests/serve/test_placement.py
    with pytest.raises(ConfigError, match="the replica needs"):
        parse_config(
            {"models": [{**base, "resources": {**good, "pipeline_parallel_size": 1, "gpu_shape": shape}}]}, "x"
        )
    with pytest.raises(ConfigError, match="STRICT_PACK needs one node"):
        strict = {**good, "placement_strategy": "STRICT_PACK", "gpu_shape": shape}
        parse_config({"models": [{**base, "resources": strict}]}, "x")
    with pytest.raises(ConfigError, match="each worker is one whole GPU"):
        parse_config({"models": [{**base, "resources": {**good, "gpus": 0.5, "gpu_shape": None}}]}, "x")
