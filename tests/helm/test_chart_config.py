"""What the chart configures: the service config loads with Paddock's own loader, ports and
exposure, process settings, probes and draining, and the RayService's Ray settings."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import APPROVAL_KEYS, CHART, Rendered, helm_template, parse
from ray.serve.schema import ServeDeploySchema

from service.config.loader import APP_BUILDER_IMPORT_PATH, ConfigError, load_config_file
from service.config.schema import ServiceConfig
from service.config.settings import Settings
from service.governance.policy import GovernanceFile
from service.serve.local import RAY_TUNING

RAY_INTERNAL_PORTS = {6379, 8265, 10001, 52365}  # GCS, dashboard/job API, client, dashboard agent


def standalone(rendered: dict[str, Rendered]) -> list[Rendered]:
    return [r for r in rendered.values() if r.of_kind("Deployment")]


def rayservices(rendered: dict[str, Rendered]) -> list[Rendered]:
    return [r for r in rendered.values() if r.of_kind("RayService")]


def load(tmp_path: Path, text: str, name: str) -> ServiceConfig:
    path = tmp_path / name
    path.write_text(text)
    return load_config_file(path)


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def ray_pod_specs(result: Rendered) -> list[dict[str, Any]]:
    cluster = result.one("RayService")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


# --- the service config ------------------------------------------------------------------------


def test_configmap_config_loads_with_the_service_loader(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    for result in standalone(rendered):
        config_map = result.one("ConfigMap", "paddock-config")
        config = load(tmp_path, config_map["data"]["paddock.yaml"], result.name.replace("/", "-") + ".yaml")
        assert config.ingress.host == config.admin.host == config.metrics.host == "0.0.0.0"
        deployment = result.one("Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["serve", "--config", "/etc/paddock/config/paddock.yaml"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == config.ingress.port


def test_serve_config_loads_with_the_service_loader(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    assert rayservices(rendered)
    for result in rayservices(rendered):
        text = result.one("RayService")["spec"]["serveConfigV2"]
        config = load(tmp_path, text, result.name.replace("/", "-") + "-serve.yaml")
        assert config.ingress.host == "0.0.0.0"
        assert config.ingress.max_replicas_per_node == 1
        serve = yaml.safe_load(text)
        ServeDeploySchema.model_validate(serve)  # what Ray's dashboard accepts from KubeRay
        # Ray Serve's proxy stays off the serve port: Paddock's ingress owns it.
        assert serve["proxy_location"] == "Disabled"
        [app] = serve["applications"]
        assert app["import_path"] == APP_BUILDER_IMPORT_PATH and app["name"] == "paddock"
        assert app["route_prefix"] is None
        assert "runtime_env" not in app  # Ray/Paddock settings are container env, not serve config


def test_both_modes_render_the_same_service_config(tmp_path: Path) -> None:
    """One set of model values: the ConfigMap and serveConfigV2 carry the same models."""
    values = tmp_path / "values.yaml"
    scenario = yaml.safe_load((CHART / "ci" / "rayservice-gpu-values.yaml").read_text())
    # One standalone GPU pod runs the CUDA image only: the embedding model gets a slice of the GPU.
    scenario["models"][1]["resources"]["gpus"] = 0.1
    values.write_text(yaml.safe_dump(scenario))
    ray = parse("ray", helm_template([values]).stdout)
    alone = parse("alone", helm_template([values], ["--set", "mode=standalone"]).stdout)
    serve_config = load(tmp_path, ray.one("RayService")["spec"]["serveConfigV2"], "a.yaml")
    file_config = load(tmp_path, alone.one("ConfigMap", "paddock-config")["data"]["paddock.yaml"], "b.yaml")
    assert serve_config.models == file_config.models
    assert [m.resources.tensor_parallel_size for m in serve_config.models] == [2, 1]


def test_a_models_routing_reaches_the_service_config(tmp_path: Path) -> None:
    """The chart's model schema knows `routing` (it refuses unknown keys) and passes it through."""
    values = tmp_path / "values.yaml"
    scenario = yaml.safe_load((CHART / "ci" / "rayservice-gpu-values.yaml").read_text())
    scenario["models"][0]["routing"] = "prefix"
    values.write_text(yaml.safe_dump(scenario))
    ray = parse("ray", helm_template([values]).stdout)
    config = load(tmp_path, ray.one("RayService")["spec"]["serveConfigV2"], "a.yaml")
    assert [m.routing_policy for m in config.models] == ["prefix", "least_loaded"]
    scenario["models"][0]["routing"] = "round_robin"
    values.write_text(yaml.safe_dump(scenario))
    assert helm_template([values], check=False).returncode != 0


def test_values_the_schema_allows_but_the_service_refuses_fail_in_the_loader(tmp_path: Path) -> None:
    """The chart schema mirrors the service schema's shape; cross-field rules stay the service's."""
    model = (
        '[{"id":"m","source":{"path":"/m"},"resources":{"gpus":0.5,"tensor_parallel_size":2},"kv_cache_memory":"1GiB"}]'
    )
    result = parse("bad", helm_template([], ["--set-json", f"models={model}", *APPROVAL_KEYS]).stdout)
    with pytest.raises(ConfigError, match="each worker is one whole GPU"):
        load(tmp_path, result.one("ConfigMap", "paddock-config")["data"]["paddock.yaml"], "bad.yaml")


def test_governance_file_validates(rendered: dict[str, Rendered]) -> None:
    found = 0
    for result in rendered.values():
        for secret in result.of_kind("Secret"):
            data = yaml.safe_load(base64.b64decode(secret["data"]["governance.yaml"]))
            GovernanceFile.model_validate(data)
            assert len(base64.b64decode(secret["data"]["admin-token"])) >= 32
            found += 1
    assert found


# --- process settings --------------------------------------------------------------------------


def test_env_is_valid_paddock_settings(rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every PADDOCK_* the chart sets is a real setting with a valid value; secrets are file paths."""
    for result in rendered.values():
        containers = [d["spec"]["template"]["spec"]["containers"][0] for d in result.of_kind("Deployment")]
        for spec in ray_pod_specs(result) if result.of_kind("RayService") else []:
            containers.append(spec["containers"][0])
        assert containers, result.name
        for container in containers:
            variables = env(container)
            for name in [n for n in variables if n.startswith("PADDOCK_")]:
                assert not isinstance(variables[name], dict) or name == "PADDOCK_RAY_NODE_IP", f"{name} from a Secret"
            for name in list(os.environ):
                if name.startswith("PADDOCK_"):
                    monkeypatch.delenv(name)
            for name, value in variables.items():
                if name.startswith("PADDOCK_") and isinstance(value, str):
                    monkeypatch.setenv(name, value)
            Settings()  # extra="forbid": an unknown PADDOCK_* or a bad value raises
            assert "PADDOCK_ADMIN_TOKEN" not in variables and "RAY_AUTH_TOKEN" not in variables
            if variables.get("PADDOCK_GOVERNANCE") == "on":
                assert variables["PADDOCK_GOVERNANCE_FILE"].startswith("/etc/paddock/governance/")
                assert variables["PADDOCK_ADMIN_TOKEN_FILE"].startswith("/etc/paddock/governance/")
                if variables["PADDOCK_STATE_STORE"] != "local":
                    assert variables["PADDOCK_STATE_STORE"].startswith(("redis://", "rediss://"))
                    assert "@" not in variables["PADDOCK_STATE_STORE"]
                    assert variables["PADDOCK_STATE_STORE_PASSWORD_FILE"].startswith("/etc/paddock/redis/")
                    if "PADDOCK_STATE_STORE_CA_FILE" in variables:
                        assert variables["PADDOCK_STATE_STORE_CA_FILE"].startswith("/etc/paddock/redis-ca/")


def test_standalone_lets_prometheus_reach_local_ray_metrics(rendered: dict[str, Rendered]) -> None:
    for result in standalone(rendered):
        container = result.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
        variables = env(container)
        assert variables["PADDOCK_RAY_METRICS_PORT"] == "8080"
        assert variables["PADDOCK_RAY_NODE_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert variables["RAY_AUTH_MODE"] == "token"


def test_every_ray_container_gets_the_ray_serve_tuning(rendered: dict[str, Rendered]) -> None:
    """The chart's defaults are the ones ``paddock serve`` applies to local Ray."""
    for result in rayservices(rendered):
        for spec in ray_pod_specs(result):
            variables = env(spec["containers"][0])
            assert {name: variables.get(name) for name in RAY_TUNING} == RAY_TUNING
    for result in standalone(rendered):
        variables = env(result.one("Deployment")["spec"]["template"]["spec"]["containers"][0])
        assert {name: variables.get(name) for name in RAY_TUNING} == RAY_TUNING


def test_ray_serve_tuning_is_a_value(tmp_path: Path) -> None:
    args = ["--set", "mode=rayservice", "--set-string", "rayServeTuning.RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.1"]
    result = parse("tuned", helm_template([], args).stdout)
    for spec in ray_pod_specs(result):
        names = [e["name"] for e in spec["containers"][0]["env"]]
        assert names.count("RAY_SERVE_CONTROL_LOOP_INTERVAL_S") == 1
        assert env(spec["containers"][0])["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"
    refused = helm_template([], ["--set-string", "rayServeTuning.OMP_NUM_THREADS=1"], check=False)
    assert refused.returncode != 0 and "rayServeTuning" in refused.stderr


# --- exposure ----------------------------------------------------------------------------------


def test_ray_internal_ports_are_on_no_service_or_ingress(rendered: dict[str, Rendered]) -> None:
    for result in rendered.values():
        for service in result.of_kind("Service"):
            ports = {p["port"] for p in service["spec"]["ports"]} | {
                p.get("targetPort") for p in service["spec"]["ports"]
            }
            assert not ports & RAY_INTERNAL_PORTS, f"{result.name}: {service['metadata']['name']} {ports}"
            if service["metadata"]["name"] in {"paddock", "paddock-admin"}:
                assert 8080 not in ports and 8002 not in ports


def test_ingress_carries_only_the_api(rendered: dict[str, Rendered]) -> None:
    found = 0
    for result in rendered.values():
        api_service = "paddock-serve-svc" if result.of_kind("RayService") else "paddock"
        for ingress in result.of_kind("Ingress"):
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    assert backend["name"] == api_service, result.name
                    assert backend["port"]["number"] == 8000
                    found += 1
    assert found


def test_admin_service_is_cluster_internal(rendered: dict[str, Rendered]) -> None:
    for result in rendered.values():
        for service in result.of_kind("Service"):
            if service["metadata"]["name"] == "paddock-admin":
                assert service["spec"]["type"] == "ClusterIP"
                assert [p["port"] for p in service["spec"]["ports"]] == [8001]


def test_every_metrics_port_is_scraped(rendered: dict[str, Rendered]) -> None:
    monitored = 0
    for result in rendered.values():
        for monitor in result.of_kind("ServiceMonitor"):
            service = result.one("Service", "paddock-metrics")
            assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in service["spec"]["ports"]}
            selector = monitor["spec"]["selector"]["matchLabels"]
            assert selector.items() <= service["metadata"]["labels"].items()
            monitored += 1
        for monitor in result.of_kind("PodMonitor"):
            ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
            assert {"metrics", "paddock-metrics"} <= ports
            specs = (
                ray_pod_specs(result)
                if result.of_kind("RayService")
                else [result.one("Deployment")["spec"]["template"]["spec"]]
            )
            for spec in specs:  # the Ray metrics agent on the head and on every worker
                assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in spec["containers"][0]["ports"]
            monitored += 1
    assert monitored >= 3


def test_network_policy_ports(rendered: dict[str, Rendered]) -> None:
    for result in rendered.values():
        for policy in result.of_kind("NetworkPolicy"):
            ports = [{p["port"] for p in rule.get("ports", [])} for rule in policy["spec"]["ingress"]]
            assert {8000} in ports
            assert any({8002, 8080} <= p for p in ports)
            for rule in policy["spec"]["ingress"]:
                open_ports = {p["port"] for p in rule.get("ports", [])}
                if open_ports & RAY_INTERNAL_PORTS:  # only the KubeRay operator, in rayservice mode
                    assert result.of_kind("RayService") and rule["from"][0]["podSelector"]["matchLabels"] == {
                        "app.kubernetes.io/name": "kuberay-operator"
                    }


# --- lifecycle ---------------------------------------------------------------------------------


def test_standalone_probes_and_draining(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    for result in standalone(rendered):
        spec = result.one("Deployment")["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        startup = container["startupProbe"]
        assert startup["httpGet"]["path"] == "/ready"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # model loading
        config = yaml.safe_load(result.one("ConfigMap", "paddock-config")["data"]["paddock.yaml"])
        sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert sleep >= 3
        assert spec["terminationGracePeriodSeconds"] > sleep + config["ingress"]["drain_timeout_s"]


def test_rayservice_cluster(rendered: dict[str, Rendered]) -> None:
    for result in rayservices(rendered):
        spec = result.one("RayService")["spec"]
        cluster = spec["rayClusterConfig"]
        assert cluster["rayVersion"] == "2.60.0"
        drain = yaml.safe_load(spec["serveConfigV2"])["applications"][0]["args"]["ingress"]["drain_timeout_s"]
        assert spec["rayClusterDeletionDelaySeconds"] > drain  # the old cluster outlives its streams
        assert cluster["authOptions"]["mode"] == "token"
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["metrics-export-port"] == "8080"
        head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert head_ports["serve"] == 8000 and head_ports["dashboard"] == 8265 and "client" not in head_ports
        for group in cluster["workerGroupSpecs"]:
            assert group["rayStartParams"]["metrics-export-port"] == "8080"
            container = group["template"]["spec"]["containers"][0]
            probe = " ".join(container["readinessProbe"]["exec"]["command"])
            # Ray >= 2.53 answers the node's health on the agent's /api/healthz (KubeRay 1.7 probes it there).
            assert "localhost:52365/api/healthz" in probe and "localhost:8000/-/healthz" in probe
            assert container["readinessProbe"]["failureThreshold"] == 1
            assert group["template"]["spec"]["terminationGracePeriodSeconds"] > 60
            volumes = {v["name"] for v in group["template"]["spec"]["volumes"]}
            assert "governance" in volumes or env(container)["PADDOCK_GOVERNANCE"] == "off"
        if "ci/rayservice-gpu" in result.name:
            assert cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
            gpu = [
                g
                for g in cluster["workerGroupSpecs"]
                if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
            ]
            assert gpu and gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_rayservice_worker_readiness_probe_runs(rendered: dict[str, Rendered]) -> None:
    """The probe's python is valid and fails when nothing answers (no Ray here)."""
    result = rayservices(rendered)[0]
    container = result.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"
    ][0]
    command = container["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    code = command[2].replace("localhost:52365", "localhost:9").replace("localhost:8000", "localhost:9")
    compile(code, "probe", "exec")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert probe.returncode != 0


def test_pod_templates_do_not_change_with_the_chart_version(tmp_path: Path) -> None:
    """A chart-only release neither rolls the pods nor makes KubeRay build a new Ray cluster."""
    chart = tmp_path / "paddock"
    shutil.copytree(CHART, chart)
    values = [Path(CHART / "ci" / "rayservice-gpu-values.yaml")]
    before = parse("before", helm_template(values, chart=chart).stdout)
    alone_before = parse("alone-before", helm_template([], chart=chart).stdout)
    chart_yaml = chart / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("\nversion: ", "\nversion: 99.0.0-", 1))
    after = parse("after", helm_template(values, chart=chart).stdout)
    alone_after = parse("alone-after", helm_template([], chart=chart).stdout)
    assert before.one("RayService")["metadata"] != after.one("RayService")["metadata"]  # the chart label moved
    assert before.one("RayService")["spec"] == after.one("RayService")["spec"]
    template = alone_before.one("Deployment")["spec"]["template"]
    assert template == alone_after.one("Deployment")["spec"]["template"]


def test_env_references_resolve(rendered: dict[str, Rendered]) -> None:
    """$(VAR) in a value refers to a variable defined earlier (or Kubernetes leaves it verbatim)."""
    traced = 0
    for result in rendered.values():
        containers = [d["spec"]["template"]["spec"]["containers"][0] for d in result.of_kind("Deployment")]
        if result.of_kind("RayService"):
            containers += [spec["containers"][0] for spec in ray_pod_specs(result)]
        for container in containers:
            defined: set[str] = set()
            for item in container.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", item.get("value", "")):
                    assert ref in defined, f"{result.name}: {item['name']} uses $({ref}) before it is defined"
                defined.add(item["name"])
            variables = env(container)
            if variables.get("PADDOCK_TRACING") == "true":
                assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"] and variables["OTEL_SERVICE_NAME"] == "paddock"
                traced += 1
    assert traced


@pytest.mark.parametrize("name", ["PADDOCK_HOST", "PADDOCK_PORT", "PADDOCK_ADMIN_PORT", "PADDOCK_METRICS_PORT"])
def test_extra_env_may_not_move_the_ports_the_chart_wires(name: str) -> None:
    """Both modes apply these settings to the config (config.loader.apply_settings); the chart's ports,
    Services and probes follow the values, so the chart refuses them in extraEnv."""
    env = f'[{{"name":"{name}","value":"9000"}}]'
    for mode in ("standalone", "rayservice"):
        result = helm_template([], ["--set", f"mode={mode}", "--set-json", f"extraEnv={env}"], check=False)
        assert result.returncode != 0 and f"extraEnv: {name} would override" in result.stderr
    other = helm_template([], ["--set-json", 'extraEnv=[{"name":"PADDOCK_LOG_LEVEL","value":"DEBUG"}]'])
    assert "PADDOCK_LOG_LEVEL" in other.stdout
