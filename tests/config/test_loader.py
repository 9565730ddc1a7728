"""Service config validation: unknown keys and bad values fail, naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.config.loader import (
    APP_BUILDER_IMPORT_PATH,
    ConfigError,
    default_config,
    load_config,
    load_config_file,
    parse_config,
)

GOOD_MODEL = {
    "id": "m",
    "source": {"path": "/models/m"},
    "kv_cache_memory": "512MiB",
}


def write(tmp_path: Path, data: object, name: str = "paddock.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_serves_both_embedded_models() -> None:
    config = default_config()
    by_name = config.model_by_name()
    assert by_name["smollm2-135m-instruct"].task == "generate"
    assert by_name["smollm2-135m-instruct"].dtype == "float32"
    assert by_name["smollm2"].id == "smollm2-135m-instruct"
    assert by_name["all-minilm-l6-v2"].task == "embed"
    assert all(not m.trust_remote_code for m in config.models)
    assert load_config(None) == config


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": [{**GOOD_MODEL, "autoscaling": {"max_replica": 2}}]})
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert f"{path}: models[0].autoscaling.max_replica: unknown key" in message
    assert "at least 1 item" not in message


def test_bad_value_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": [{**GOOD_MODEL, "autoscaling": {"min_replicas": -1}}]})
    with pytest.raises(ConfigError, match=r"models\[0\]\.autoscaling\.min_replicas"):
        load_config_file(path)


def test_hf_source_needs_pinned_revision() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.source\.revision: Field required"):
        parse_config({"models": [{**GOOD_MODEL, "source": {"hf": "org/name"}}]}, "x.yaml")
    with pytest.raises(ConfigError, match=r"source\.revision"):
        parse_config({"models": [{**GOOD_MODEL, "source": {"hf": "org/name", "revision": "main"}}]}, "x.yaml")
    sha = "a" * 40
    config = parse_config({"models": [{**GOOD_MODEL, "source": {"hf": "org/name", "revision": sha}}]}, "x.yaml")
    assert config.models[0].source.revision == sha  # type: ignore[union-attr]


def test_source_must_be_exactly_one_kind() -> None:
    with pytest.raises(ConfigError, match="source needs exactly one of"):
        parse_config({"models": [{**GOOD_MODEL, "source": {"path": "/a", "uri": "s3://b/c"}}]}, "x")
    config = parse_config({"models": [{**GOOD_MODEL, "source": {"uri": "s3://bucket/m"}}]}, "x")
    assert config.models[0].source.uri == "s3://bucket/m"  # type: ignore[union-attr]


def test_kv_cache_must_be_explicit_for_generation() -> None:
    model = {k: v for k, v in GOOD_MODEL.items() if k != "kv_cache_memory"}
    with pytest.raises(ConfigError, match="kv_cache_memory"):
        parse_config({"models": [model]}, "x")
    parse_config({"models": [{**model, "engine_args": {"gpu_memory_utilization": 0.9}}]}, "x")
    parse_config({"models": [{**model, "task": "embed"}]}, "x")


def test_engine_args_cannot_bypass_owned_fields() -> None:
    for key in ("trust_remote_code", "dtype", "model", "kv_cache_memory_bytes"):
        with pytest.raises(ConfigError, match=rf"engine_args: .*{key} cannot be set"):
            parse_config({"models": [{**GOOD_MODEL, "engine_args": {key: True}}]}, "x")


def test_trust_remote_code_is_off_unless_enabled() -> None:
    config = parse_config({"models": [GOOD_MODEL]}, "x")
    assert config.models[0].trust_remote_code is False
    on = parse_config({"models": [{**GOOD_MODEL, "trust_remote_code": True}]}, "x")
    assert on.models[0].trust_remote_code is True


def test_duplicate_names_and_aliases_rejected() -> None:
    other = {**GOOD_MODEL, "id": "n", "aliases": ["m"]}
    with pytest.raises(ConfigError, match="'m' is used by both 'm' and 'n'"):
        parse_config({"models": [GOOD_MODEL, other]}, "x")


def test_autoscaling_bounds_and_scale_to_zero() -> None:
    with pytest.raises(ConfigError, match="min_replicas must not exceed max_replicas"):
        parse_config({"models": [{**GOOD_MODEL, "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]}, "x")
    config = parse_config({"models": [{**GOOD_MODEL, "autoscaling": {"min_replicas": 0}}]}, "x")
    assert config.models[0].autoscaling.scale_to_zero


def test_tensor_parallel_executor_and_strategy() -> None:
    """The placement itself is pinned in tests/serve/test_placement.py."""
    config = parse_config(
        {"models": [{**GOOD_MODEL, "resources": {"gpus": 1, "cpus": 4, "tensor_parallel_size": 4}}]},
        "x",
    )
    resources = config.models[0].resources
    assert (resources.gpu_workers, resources.strategy, resources.executor) == (4, "STRICT_PACK", "mp")
    cpu = parse_config({"models": [{**GOOD_MODEL, "resources": {"tensor_parallel_size": 2}}]}, "x")
    assert cpu.models[0].resources.executor == "mp"  # CPU workers: processes of the replica
    with pytest.raises(ConfigError, match="each worker is one whole GPU"):
        parse_config({"models": [{**GOOD_MODEL, "resources": {"gpus": 2, "tensor_parallel_size": 2}}]}, "x")


def test_ray_serve_config_file_carries_the_same_config(tmp_path: Path) -> None:
    serve_config = {
        "applications": [
            {"name": "other", "import_path": "x:y", "args": {}},
            {
                "name": "paddock",
                "route_prefix": "/",
                "import_path": APP_BUILDER_IMPORT_PATH,
                "args": {"models": [GOOD_MODEL]},
            },
        ]
    }
    config = load_config_file(write(tmp_path, serve_config))
    assert config.models[0].id == "m"
    serve_config["applications"][1]["args"] = {"models": [{**GOOD_MODEL, "bogus": 1}]}
    path = write(tmp_path, serve_config)
    with pytest.raises(ConfigError, match=r"applications\[1\]\.args: models\[0\]\.bogus: unknown key"):
        load_config_file(path)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config_file(write(tmp_path, ["a"]))


def test_shipped_serve_config_loads_with_the_same_loader() -> None:
    root = Path(__file__).resolve().parents[2]
    config = load_config_file(root / "deploy" / "serve-config.yaml")
    by_name = config.model_by_name()
    assert by_name["gpt-oss-20b"].resources.gpus == 1
    assert by_name["all-minilm-l6-v2"].autoscaling.scale_to_zero
    e2e = load_config_file(root / "tests" / "e2e" / "paddock-e2e.yaml")
    assert {m.id for m in e2e.models} == {m.id for m in default_config().models}
