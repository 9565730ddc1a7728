"""vLLM engine arguments from a model entry: the reasoning parser reaches the engine, typed sub-configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm.config import StructuredOutputsConfig

from service.config.schema import ModelConfig
from service.engine.vllm_engine.args import EngineArgsError, engine_args


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
