"""Catalog models through the chart: `models: [{catalog: NAME}]` renders deploy/models/NAME.yaml
(files/models links there) into the service config of both modes, sizes the GPUs from the entry,
and refuses unpinned entries unless the values pin them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_tools import APPROVAL_KEYS, REPO, Rendered, helm_template, parse

from service.config.loader import load_catalog_file, load_config_file
from service.config.schema import ModelConfig, ServiceConfig

CATALOG = REPO / "deploy" / "models"
ENTRIES = sorted(CATALOG.glob("*.yaml"))
TEST_PIN = "1234567890abcdef1234567890abcdef12345678"  # any 40 hex digits: rendering never fetches


def catalog_model(path: Path) -> ModelConfig:
    return load_catalog_file(path).config.models[0]


def is_unpinned(path: Path) -> bool:
    return bool(load_catalog_file(path).unpinned)


def render(path: Path, mode: str, check: bool = True, **override: Any):
    ref = {"catalog": path.stem, **override}
    if is_unpinned(path) and "revision" not in override:
        ref["revision"] = TEST_PIN
    args = ["--set", f"mode={mode}", "--set-json", f"models={json.dumps([ref])}", *APPROVAL_KEYS]
    return helm_template([], args, check=check)


def load(tmp_path: Path, text: str, name: str) -> ServiceConfig:
    path = tmp_path / name
    path.write_text(text)
    return load_config_file(path)


def gpus(resources: dict[str, Any]) -> tuple[int, int]:
    return int(resources["requests"].get("nvidia.com/gpu", 0)), int(resources["limits"].get("nvidia.com/gpu", 0))


def model_groups(result: Rendered) -> list[dict[str, Any]]:
    groups = result.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return [g for g in groups if g["groupName"].startswith("gpu-")]


def same_as_catalog(rendered: ModelConfig, entry: ModelConfig) -> None:
    """The rendered model is the catalog entry (an unpinned one with the values' pin)."""
    if entry.source.revision != rendered.source.revision:  # type: ignore[union-attr]
        assert rendered.source.revision == TEST_PIN  # type: ignore[union-attr]
        rendered = rendered.model_copy(update={"source": entry.source})
    assert rendered == entry


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.stem)
def test_rayservice_renders_the_entry_and_sizes_its_workers(path: Path, tmp_path: Path) -> None:
    entry = catalog_model(path)
    result = parse(path.stem, render(path, "rayservice").stdout)
    config = load(tmp_path, result.one("RayService")["spec"]["serveConfigV2"], "serve.yaml")
    [model] = config.models
    same_as_catalog(model, entry)
    shape = entry.resources.gpu_shape
    assert shape is not None
    [group] = model_groups(result)
    container = group["template"]["spec"]["containers"][0]
    assert gpus(container["resources"]) == (shape.gpus_per_node, shape.gpus_per_node)
    # One replica's pods hold exactly its TP x PP GPU workers.
    pods_per_replica = group["minReplicas"] // max(entry.autoscaling.min_replicas, 1)
    assert pods_per_replica == shape.nodes
    workers = entry.resources.tensor_parallel_size * entry.resources.pipeline_parallel_size
    assert shape.gpus_per_node * pods_per_replica == workers * entry.resources.gpus
    assert group["maxReplicas"] == shape.nodes * entry.autoscaling.max_replicas


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.stem)
def test_standalone_renders_one_node_entries(path: Path, tmp_path: Path) -> None:
    entry = catalog_model(path)
    shape = entry.resources.gpu_shape
    assert shape is not None
    result = render(path, "standalone", check=False)
    if shape.nodes > 1:  # one pod cannot hold several nodes' GPUs
        assert result.returncode != 0
        assert f"model {entry.id} needs {shape.nodes} nodes" in result.stderr and "rayservice" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    rendered = parse(path.stem, result.stdout)
    config = load(tmp_path, rendered.one("ConfigMap", "paddock-config")["data"]["paddock.yaml"], "paddock.yaml")
    [model] = config.models
    same_as_catalog(model, entry)
    container = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    workers = entry.resources.tensor_parallel_size * entry.resources.pipeline_parallel_size
    assert gpus(container["resources"]) == (workers, workers)


@pytest.mark.parametrize("path", [p for p in ENTRIES if is_unpinned(p)], ids=lambda p: p.stem)
def test_unpinned_entries_need_a_revision_in_values(path: Path) -> None:
    source = load_catalog_file(path).unpinned[0]
    for mode in ("standalone", "rayservice"):
        ref = json.dumps([{"catalog": path.stem}])
        result = helm_template([], ["--set", f"mode={mode}", "--set-json", f"models={ref}"], check=False)
        assert result.returncode != 0
        assert f"{source.hf} is not pinned" in result.stderr
        assert f"git ls-remote https://huggingface.co/{source.hf} refs/heads/main" in result.stderr


def test_overrides_merge_over_the_entry(tmp_path: Path) -> None:
    ref = {
        "catalog": "gpt-oss-120b",
        "max_model_len": 8192,
        "autoscaling": {"min_replicas": 2, "max_replicas": 4},
        "resources": {"tensor_parallel_size": 2, "gpu_shape": {"gpu": "H100-80GB", "gpus_per_node": 2}},
    }
    extra = ["--set", "mode=rayservice", "--set-json", f"models={json.dumps([ref])}", *APPROVAL_KEYS]
    result = parse("override", helm_template([], extra).stdout)
    [model] = load(tmp_path, result.one("RayService")["spec"]["serveConfigV2"], "o.yaml").models
    entry = catalog_model(CATALOG / "gpt-oss-120b.yaml")
    assert model.max_model_len == 8192 and model.resources.tensor_parallel_size == 2
    assert model.resources.cpus == entry.resources.cpus and model.source == entry.source  # the rest stays
    [group] = model_groups(result)
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 4)


def test_unknown_catalog_name_and_stray_revision_fail() -> None:
    bad = helm_template([], ["--set-json", 'models=[{"catalog":"no-such-model"}]'], check=False)
    assert bad.returncode != 0 and 'no catalog model "no-such-model"' in bad.stderr
    stray = '[{"id":"m","source":{"path":"/m"},"kv_cache_memory":"1GiB","revision":"' + TEST_PIN + '"}]'
    assert helm_template([], ["--set-json", f"models={stray}"], check=False).returncode != 0


def test_model_worker_groups_can_be_turned_off() -> None:
    ref = json.dumps([{"catalog": "gpt-oss-20b"}])
    extra = ["--set", "mode=rayservice", "--set", "rayService.modelWorkerGroups.enabled=false", *APPROVAL_KEYS]
    result = parse("off", helm_template([], [*extra, "--set-json", f"models={ref}"]).stdout)
    assert not model_groups(result)
