"""Every pod runs an image that can serve what it is given (issue 16, items 2 and 3): the demo image
where embedded models run (its baked-in models seeded into the cache volume that would hide them),
the CUDA image on pods with GPUs and only GPU models there, the CPU image for the head, the
ingresses and CPU-only models; GPU workers keep their Ray CPUs for their engine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import APPROVAL_KEYS, CHART, Rendered, helm_template, parse, service_config

from service.config.schema import EmbeddedSource

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
REPOSITORY = "ghcr.io/paddock/paddock-serve"
EMBEDDING = {"id": "emb", "source": {"embedded": "all-minilm-l6-v2"}, "task": "embed", "max_model_len": 256}


def gpus(container: dict[str, Any]) -> int:
    resources = container.get("resources", {})
    return max(int(resources.get(kind, {}).get("nvidia.com/gpu", 0)) for kind in ("requests", "limits"))


def server_pods(result: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(role, pod spec, ray start params) of every Paddock server pod: standalone, head, worker groups."""
    if not result.of_kind("RayService"):
        return [("standalone", result.one("Deployment")["spec"]["template"]["spec"], {})]
    cluster = result.one("RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    pods = [("head", head["template"]["spec"], head["rayStartParams"])]
    return pods + [(g["groupName"], g["template"]["spec"], g["rayStartParams"]) for g in cluster["workerGroupSpecs"]]


def test_every_pod_runs_an_image_that_serves_its_models(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    seeded = gpu_pods = 0
    for result in rendered.values():
        config = service_config(result, tmp_path)
        embedded = [m.id for m in config.models if isinstance(m.source, EmbeddedSource)]
        cpu_only = [m.id for m in config.models if m.resources.gpus == 0]
        for role, spec, _ in server_pods(result):
            where = f"{result.name} {role}"
            container = spec["containers"][0]
            image = container["image"]
            assert image.startswith(REPOSITORY + ":" + APP_VERSION + "-"), where
            inits = {c["name"]: c for c in spec.get("initContainers", [])}
            runs_models = role != "head"  # num-cpus 0: the head runs no replica
            if gpus(container):
                gpu_pods += 1
                assert image.endswith(f"{APP_VERSION}-cuda"), where
                assert "seed-model-cache" not in inits, where
                if role == "standalone":
                    assert not cpu_only, f"{where}: CPU-only models {cpu_only} on the CUDA image"
                continue
            if embedded and runs_models:
                # Only the demo image has the embedded models; it seeds them into the cache volume.
                assert image.endswith(f"{APP_VERSION}-cpu-demo"), where
                seed = inits["seed-model-cache"]
                assert seed["image"] == image
                assert [m["name"] for m in seed["volumeMounts"]] == ["model-cache"]
                seeded += 1
            elif not embedded:
                assert image.endswith(f"{APP_VERSION}-cpu"), where
                assert not inits, where
    assert seeded >= 3 and gpu_pods >= 3


def test_gpu_workers_keep_their_ray_cpus_for_their_engine(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """A GPU group's num-cpus is its model's resources.cpus: an ingress replica (0.5 CPU) or a
    CPU-only model cannot land there and keep a GPU node up; the CPU groups hold every ingress."""
    checked = 0
    for result in rendered.values():
        if not result.of_kind("RayService"):
            continue
        config = service_config(result, tmp_path)
        models = {f"gpu-{m.id}": m for m in config.models if m.resources.gpu_shape}
        cpu_nodes = 0
        for role, spec, params in server_pods(result)[1:]:
            if gpus(spec["containers"][0]):
                assert params["num-cpus"] == str(math.ceil(models[role].resources.cpus)), role
                checked += 1
            else:
                cpu_nodes += next(
                    g["maxReplicas"]
                    for g in result.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
                    if g["groupName"] == role
                )
        assert cpu_nodes >= config.ingress.replicas, result.name
    assert checked >= 2


def test_the_seed_copies_missing_model_folders_atomically_and_keeps_the_rest(tmp_path: Path) -> None:
    """The init container's script, run on a fake image cache and a cache volume."""
    spec = parse("default", helm_template([]).stdout).one("Deployment")["spec"]["template"]["spec"]
    [seed] = spec["initContainers"]
    command = seed["command"]
    assert command[:2] == ["python", "-c"] and command[3:] == ["/var/cache/paddock", "/seed/model-cache"]
    image, cache = tmp_path / "image", tmp_path / "cache"
    (image / "smollm2-135m-instruct").mkdir(parents=True)
    (image / "smollm2-135m-instruct" / "model.safetensors").write_bytes(b"weights")
    (image / "smollm2-135m-instruct.lock").write_text("")
    (image / "kept").mkdir()
    (image / "kept" / "file").write_text("from the image")
    cache.mkdir()
    (cache / "kept").mkdir()
    (cache / "kept" / "file").write_text("already in the cache")
    stale = cache / ".seed-smollm2-135m-instruct-old"  # a copy interrupted two hours ago
    (stale / "smollm2-135m-instruct").mkdir(parents=True)
    (stale / "smollm2-135m-instruct" / "partial").write_text("")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    busy = cache / ".seed-smollm2-135m-instruct-busy"  # another pod's copy, in progress
    busy.mkdir()

    def seed_once() -> str:
        done = subprocess.run(
            [sys.executable, "-c", command[2], str(image), str(cache)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "seeded" in seed_once()
    assert (cache / "smollm2-135m-instruct" / "model.safetensors").read_bytes() == b"weights"
    assert not (cache / "smollm2-135m-instruct" / "partial").exists()
    assert (cache / "kept" / "file").read_text() == "already in the cache"
    # No lock file, no staging of its own, the stale one gone, the other pod's left alone.
    assert sorted(p.name for p in cache.iterdir()) == [busy.name, "kept", "smollm2-135m-instruct"]
    assert seed_once() == ""  # nothing left to copy


def test_pods_seeding_one_shared_cache_at_once_both_succeed(tmp_path: Path) -> None:
    """Two pods on a ReadWriteMany cache: each copies into its own staging, the first rename wins."""
    spec = parse("default", helm_template([]).stdout).one("Deployment")["spec"]["template"]["spec"]
    script = spec["initContainers"][0]["command"][2]
    image, cache = tmp_path / "image", tmp_path / "cache"
    for index in range(40):  # enough files that the two copies overlap
        (image / "smollm2-135m-instruct" / f"shard-{index}").parent.mkdir(parents=True, exist_ok=True)
        (image / "smollm2-135m-instruct" / f"shard-{index}").write_bytes(os.urandom(64 * 1024))
    cache.mkdir()
    seeders = [
        subprocess.Popen([sys.executable, "-c", script, str(image), str(cache)], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for seeder in seeders:
        _, errors = seeder.communicate(timeout=60)
        assert seeder.returncode == 0, errors
    assert sorted(p.name for p in cache.iterdir()) == ["smollm2-135m-instruct"]
    assert len(list((cache / "smollm2-135m-instruct").iterdir())) == 40


def render(*args: str, check: bool = True) -> Rendered:
    result = helm_template([], [*APPROVAL_KEYS, *args], check=check)  # keys for the Hub models: none to the demo
    return parse("values", result.stdout) if check else result  # type: ignore[return-value]


def test_default_tags_follow_make_image_and_the_models() -> None:
    default = render().one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert default == f"{REPOSITORY}:{APP_VERSION}-cpu-demo"  # the chart's default models are embedded
    hub = json.dumps([{"id": "m", "source": {"path": "/models/m"}, "kv_cache_memory": "1GiB"}])
    plain = render("--set-json", f"models={hub}").one("Deployment")["spec"]["template"]["spec"]
    assert plain["containers"][0]["image"] == f"{REPOSITORY}:{APP_VERSION}-cpu" and "initContainers" not in plain
    gpu = render("--set-json", 'models=[{"catalog":"gpt-oss-20b"}]').one("Deployment")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["image"] == f"{REPOSITORY}:{APP_VERSION}-cuda"
    digest = "sha256:" + "a" * 64
    mirrored = render(
        "--set-json",
        'models=[{"catalog":"gpt-oss-20b"}]',
        "--set",
        "gpuImage.repository=mirror/paddock",
        "--set",
        f"gpuImage.digest={digest}",
    ).one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert mirrored == f"mirror/paddock@{digest}"
    tagged = render("--set", "image.tag=custom").one("Deployment")["spec"]["template"]["spec"]
    assert tagged["containers"][0]["image"] == f"{REPOSITORY}:custom"
    assert tagged["initContainers"][0]["image"] == f"{REPOSITORY}:custom"  # still seeded: a demo by its models


REFUSED = [
    (["--set", "image.variant=cpu"], "models smollm2-135m-instruct, all-minilm-l6-v2 have an embedded source"),
    (
        ["--set-json", f'models=[{{"catalog":"gpt-oss-20b"}},{json.dumps(EMBEDDING)}]'],
        "models emb use no GPU (resources.gpus 0), but this pod requests GPUs",
    ),
    (
        ["--set", "mode=rayservice", "--set-json", "rayService.workerGroups=[]", "--set", "governance.enabled=false"],
        "ingress.replicas 1 needs as many CPU worker nodes",
    ),
    (
        [
            "--set",
            "mode=rayservice",
            "--set",
            "ingress.replicas=3",
            "--set",
            "governance.stateStore.type=redis",
            "--set",
            "governance.stateStore.redis.url=redis://r:6379/1",
        ],
        "ingress.replicas 3 needs as many CPU worker nodes (one ingress per node; GPU workers hold their model "
        "only), but the CPU groups of rayService.workerGroups reach 2 (maxReplicas); they also run the CPU-only "
        "models smollm2-135m-instruct, all-minilm-l6-v2",
    ),
]


@pytest.mark.parametrize(("args", "message"), REFUSED, ids=["variant", "cpu-on-cuda", "no-cpu-group", "too-few"])
def test_pods_that_could_not_serve_their_models_are_refused(args: list[str], message: str) -> None:
    result = helm_template([], args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_a_cpu_only_model_may_share_the_gpu_with_a_fraction() -> None:
    shared = {**EMBEDDING, "resources": {"gpus": 0.1}}
    engine = {"catalog": "gpt-oss-20b", "resources": {"cpus": 4, "gpus": 0.9}}
    values = json.dumps([engine, shared])
    spec = render("--set-json", f"models={values}").one("Deployment")["spec"]["template"]["spec"]
    assert gpus(spec["containers"][0]) == 1  # 0.9 + 0.1: one GPU, rounded up once


def test_gpu_worker_ray_cpus_can_be_set_explicitly() -> None:
    args = ["--set", "mode=rayservice", "--set-json", 'models=[{"catalog":"gpt-oss-20b"}]', *APPROVAL_KEYS]
    args += ["--set-string", "rayService.modelWorkerGroups.rayStartParams.num-cpus=12"]
    groups = render(*args).one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    [gpu] = [g for g in groups if g["groupName"].startswith("gpu-")]
    assert gpu["rayStartParams"]["num-cpus"] == "12"
    assert gpu["template"]["spec"]["containers"][0]["image"].endswith("-cuda")
    [cpu] = [g for g in groups if not g["groupName"].startswith("gpu-")]
    assert cpu["template"]["spec"]["containers"][0]["image"].endswith(f"{APP_VERSION}-cpu")
