"""A two-node Ray cluster of a test's own, with ``paddock serve`` deployed onto it: ingress on the head, model on the worker.

``ray start --head`` and ``ray start --address``, each ``--block`` as in a KubeRay pod, with its own temp dir,
ports and Ray token, and ``paddock serve`` deployed onto it through ``PADDOCK_RAY_ADDRESS``. The chat model
needs the custom resource ``accelerator_type:paddock-drain``, which both nodes have; a holder actor keeps the
head's while Paddock deploys, and the worker joins once the ingress runs on the head, so the ingress is on the
head and the model replica on the worker (:func:`model_on_worker`). Used by test_ray_node_drain.py and
test_ray_node_loss.py. Only these processes are stopped: the nodes by SIGTERM to their ``ray start`` (what the
kubelet sends), then whatever is left that names their temp dirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.ports import free_port
from harness.processes import kill_strays
from tests.e2e.conftest import Stack, serve_stack

ROOT = Path(__file__).resolve().parents[2]
RAY = ROOT / ".venv/bin/ray"
PYTHON = ROOT / ".venv/bin/python"
CHAT = "smollm2-135m-instruct"
RESOURCE = "accelerator_type:paddock-drain"

# The holder: an actor on the head (node:__internal_head__) holding the head's share of RESOURCE until stdin closes.
HOLDER = f"""
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=0, resources={{"node:__internal_head__": 0.001, "{RESOURCE}": 1}})
class Holder:
    def ready(self):
        return True
holder = Holder.remote()
ray.get(holder.ready.remote())
print("held", flush=True)
sys.stdin.readline()
"""

# Where the app's replicas are: node id -> replica actor names, plus the nodes' temp dirs (service.cli.node's reads).
PLACEMENT = """
import json, sys
from service.cli import node
gcs = node._gcs(sys.argv[1], None)
nodes = {n.node_id: {"head": n.is_head, "alive": n.alive, "temp_dir": n.temp_dir} for n in node._nodes(gcs)}
replicas = node._replicas(gcs)
print(json.dumps({"nodes": nodes, "replicas": {i: node.replicas_on(replicas, i) for i in nodes}}))
"""


@dataclass
class RayNode:
    process: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    head: RayNode
    nodes: list[RayNode] = field(default_factory=list)
    name: str = "drain"  # names its temp dirs and kept logs

    def placement(self) -> dict[str, dict[str, object]]:
        result = subprocess.run(
            [str(PYTHON), "-c", PLACEMENT, self.address],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    def node_id(self, temp_dir: Path) -> str:
        nodes = self.placement()["nodes"]
        (found,) = [i for i, n in nodes.items() if n["alive"] and n["temp_dir"] == str(temp_dir)]  # type: ignore[index]
        return found


def _ports() -> list[str]:
    return [
        *("--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())),
        *("--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port())),
        *("--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())),
    ]


def start_node(args: list[str], env: dict[str, str], name: str = "drain") -> RayNode:
    temp_dir = Path(tempfile.mkdtemp(prefix=f"pd-{name}-ray-", dir="/tmp"))
    log = temp_dir.with_suffix(".log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(RAY),
                "start",
                *args,
                "--temp-dir",
                str(temp_dir),
                *_ports(),
                "--block",
                "--disable-usage-stats",
                "--log-color",
                "false",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RayNode(process, temp_dir, log)


def stop_node(node: RayNode) -> None:
    """SIGTERM to ``ray start`` (as the kubelet sends it), then SIGKILL to what is left of this node."""
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.process.pid, signal.SIGKILL)
    kill_strays(node.temp_dir)
    shutil.rmtree(node.temp_dir, ignore_errors=True)


def wait_for(what: str, check: object, timeout_s: float, every_s: float = 1.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")


@contextlib.contextmanager
def ray_cluster(name: str = "drain") -> Iterator[Cluster]:
    env = {
        **os.environ,
        # Ray token authentication, as KubeRay sets it on every Ray container (a token of this cluster's own).
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "10",
    }
    port = free_port()
    head = start_node(
        [
            "--head",
            *("--port", str(port), "--num-cpus", "2", "--resources", json.dumps({RESOURCE: 1})),
            *("--include-dashboard", "false", "--dashboard-port", str(free_port())),
            *("--ray-client-server-port", str(free_port())),
        ],
        env,
        name,
    )
    cluster = Cluster(f"{os.uname().nodename}:{port}", env, head, [head], name)
    try:
        cluster.address = f"{_node_ip(head)}:{port}"
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            stop_node(node)
        for role, node in zip(("head", "worker"), cluster.nodes, strict=False):  # `ray start`'s own output, kept
            with contextlib.suppress(OSError):
                shutil.move(node.log, Path(tempfile.gettempdir()) / f"paddock-{name}-e2e-ray-{role}.log")


def _node_ip(head: RayNode) -> str:
    """The head's IP, from its log ("Local node IP: …"), once GCS is up."""

    def ip() -> str | None:
        if head.process.poll() is not None:
            raise RuntimeError("ray start --head exited:\n" + head.log.read_text(errors="replace"))
        text = head.log.read_text(errors="replace")
        if "Ray runtime started" not in text:
            return None
        for line in text.splitlines():
            if "Local node IP" in line:
                return line.rsplit(" ", 1)[-1].strip()
        return None

    return str(wait_for("the Ray head", ip, 120, 0.5))


def join_worker_after_ingress(cluster: Cluster, head_id: str) -> None:
    """Start the worker node (1 CPU and RESOURCE, a model worker pod's shape) once the ingress runs on the head."""

    def ingress_on_head() -> bool:
        return any("Ingress" in name for name in cluster.placement()["replicas"].get(head_id, []))  # type: ignore[attr-defined]

    wait_for("the ingress on the head", ingress_on_head, 600, 2.0)
    worker = ["--address", cluster.address, "--num-cpus", "1", "--resources", json.dumps({RESOURCE: 1})]
    for _ in range(3):
        node = start_node(worker, cluster.env, cluster.name)

        def started(node: RayNode = node) -> str:
            if node.process.poll() is not None:
                return "exited"
            return "started" if "Ray runtime started" in node.log.read_text(errors="replace") else ""

        if wait_for("the Ray worker", started, 180, 0.5) == "started":
            cluster.nodes.append(node)
            return
        # On a loaded machine its raylet may give up waiting for its own agents (15 s): start it again.
        sys.stderr.write("ray start --address exited:\n" + node.log.read_text(errors="replace")[-2000:])
        stop_node(node)
        node.log.unlink(missing_ok=True)
    raise RuntimeError("the Ray worker did not start")


def write_tenants(path: Path, tenants: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A governance file of ``tenants`` (key name -> tenant), one fresh key each; returns key name -> key."""
    from service.governance.keys import hash_key, new_key

    keys = {name: new_key() for name in tenants}
    entries = [{**t, "keys": [{"id": f"key-{name}", "hash": hash_key(keys[name])}]} for name, t in tenants.items()]
    path.write_text(yaml.safe_dump({"version": 1, "tenants": entries}, sort_keys=False))
    return keys


@dataclass
class Deployed:
    """``paddock serve`` on a two-node cluster: the ingress on the head, the model replica on the worker."""

    cluster: Cluster
    stack: Stack
    holder: subprocess.Popen[str]
    head_id: str
    worker: RayNode
    worker_id: str

    def release_head(self) -> None:
        """The holder lets go of the head's RESOURCE: the head can host a replacement now."""
        self.holder.stdin.close()  # type: ignore[union-attr]
        self.holder.wait(timeout=60)


@contextlib.contextmanager
def model_on_worker(name: str, tenants: dict[str, dict[str, Any]], ingress: dict[str, Any]) -> Iterator[Deployed]:
    """Deploy the chat model (1 CPU and RESOURCE) onto a cluster of ``name`` with ``tenants``' keys (see above)."""
    state_dir = Path(tempfile.mkdtemp(prefix=f"pd-{name}-state-", dir="/tmp"))
    keys = write_tenants(state_dir / "governance.yaml", tenants)
    ports = port, admin_port, metrics_port = free_port(), free_port(), free_port()
    config = {
        "models": [
            {
                "id": CHAT,
                "source": {"embedded": CHAT},
                "dtype": "float32",
                "max_model_len": 1024,
                "kv_cache_memory": "256MiB",
                "resources": {"cpus": 1, "accelerator_type": RESOURCE.removeprefix("accelerator_type:")},
            }
        ],
        "ingress": {"port": port, "cpus": 0.25, **ingress},
        "admin": {"port": admin_port},
        "metrics": {"port": metrics_port},
    }
    config_file = state_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, state_dir, ignore_errors=True)
        cluster = cleanup.enter_context(ray_cluster(name))
        holder = subprocess.Popen(
            [str(PYTHON), "-c", HOLDER, cluster.address],
            env=cluster.env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        cleanup.callback(lambda: holder.poll() is None and holder.kill())
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        environ: dict[str, str | None] = {
            "PADDOCK_RAY_ADDRESS": cluster.address,
            **{k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")},
        }
        head_id = cluster.node_id(cluster.head.temp_dir)
        # The worker joins once the ingress runs on the head (`paddock serve` is ready once the model is too).
        joiner = threading.Thread(target=join_worker_after_ingress, args=(cluster, head_id), daemon=True)
        joiner.start()
        log_name = f"paddock-{name}-e2e.log"
        stack = cleanup.enter_context(serve_stack(config_file, ports, keys, state_dir, environ, log_name))
        joiner.join(timeout=60)
        worker = cluster.nodes[-1]
        worker_id = cluster.node_id(worker.temp_dir)
        placed = cluster.placement()["replicas"]
        assert [r for r in placed[worker_id] if "model-" in r], placed  # type: ignore[index]
        assert any("Ingress" in r for r in placed[head_id]), placed  # type: ignore[index]
        yield Deployed(cluster, stack, holder, head_id, worker, worker_id)
