"""A Ray worker pod's stop, on one machine: `paddock node drain` (the chart's preStop) moves the replicas away.

A two-node Ray cluster of its own (``ray start --head`` and ``ray start --address``, each ``--block`` as in a
KubeRay pod, with its own temp dir, ports and Ray token), and ``paddock serve`` deployed onto it through
``PADDOCK_RAY_ADDRESS``. The chat model needs the custom resource ``accelerator_type:paddock-drain``, which
both nodes have; a holder actor keeps the head's while Paddock deploys, and the worker joins once the ingress
runs on the head, so the ingress is on the head and the model replica on the worker. Then the holder lets go,
streams run on the worker's replica, and ``paddock node drain`` drains the worker: Ray Serve starts a
replacement on the head, and stops the old replica gracefully once the replacement runs or at the deadline
less its graceful shutdown (on a loaded machine the replacement takes minutes). Every stream ends with
``[DONE]``, at least one was in flight when the old replica began to stop, the replacement serves, and the
command returns before its deadline. Only this module's processes are stopped: the nodes by SIGTERM to
their ``ray start`` (what the kubelet sends), then whatever is left that names their temp dirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from harness.ports import free_port
from harness.processes import kill_strays
from tests.e2e.conftest import Stack, serve_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RAY = ROOT / ".venv/bin/ray"
PYTHON = ROOT / ".venv/bin/python"
CHAT = "smollm2-135m-instruct"
RESOURCE = "accelerator_type:paddock-drain"
DEADLINE_S = 300
STREAM = {
    "model": CHAT,
    "messages": [{"role": "user", "content": "Count slowly from one to one hundred."}],
    "max_tokens": 16,
    "ignore_eos": True,
    "stream": True,
}

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


def start_node(args: list[str], env: dict[str, str]) -> RayNode:
    temp_dir = Path(tempfile.mkdtemp(prefix="pd-drain-ray-", dir="/tmp"))
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
def ray_cluster() -> Iterator[Cluster]:
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
    )
    cluster = Cluster(f"{os.uname().nodename}:{port}", env, head, [head])
    try:
        cluster.address = f"{_node_ip(head)}:{port}"
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            stop_node(node)
        for name, node in zip(("head", "worker"), cluster.nodes, strict=False):  # `ray start`'s own output, kept
            with contextlib.suppress(OSError):
                shutil.move(node.log, Path(tempfile.gettempdir()) / f"paddock-drain-e2e-ray-{name}.log")


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


def stop_time(head_dir: Path) -> float:
    """When Serve's controller began to stop the model replica on the draining node (its log, on the head)."""
    pattern = re.compile(
        r"^INFO (\S+ \S+) controller .*Stopping Replica\(id='\w+', deployment='model-.* on draining node"
    )
    for path in (head_dir / "session_latest" / "logs" / "serve").glob("controller_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if match := pattern.match(line):
                return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError("Serve never stopped the replica on the draining node")


def join_worker_after_ingress(cluster: Cluster, head_id: str) -> None:
    """Start the worker node (1 CPU and RESOURCE, a model worker pod's shape) once the ingress runs on the head."""

    def ingress_on_head() -> bool:
        return any("Ingress" in name for name in cluster.placement()["replicas"].get(head_id, []))  # type: ignore[attr-defined]

    wait_for("the ingress on the head", ingress_on_head, 600, 2.0)
    worker = ["--address", cluster.address, "--num-cpus", "1", "--resources", json.dumps({RESOURCE: 1})]
    cluster.nodes.append(start_node(worker, cluster.env))


def _governance(path: Path) -> dict[str, str]:
    from service.governance.keys import hash_key, new_key

    key = new_key()
    tenant = {
        "id": "drain",
        "models": ["*"],
        "parameters": {"allowed_fields": ["ignore_eos"]},
        "keys": [{"id": "key-drain", "hash": hash_key(key)}],
    }
    path.write_text(yaml.safe_dump({"version": 1, "tenants": [tenant]}, sort_keys=False))
    return {"acme": key}


@dataclass
class Streams:
    """Streams in a loop from two clients: each a status, whether it ended with [DONE], and any in-band error."""

    stack: Stack
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    results: list[dict[str, object]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        with self.stack.http(timeout=httpx.Timeout(900, connect=10)) as http:
            while not self.stop.is_set():
                began, done, errors, status, retry_after = time.time(), False, [], 0, None
                try:
                    with http.stream("POST", "/v1/chat/completions", json=STREAM) as response:
                        status, retry_after = response.status_code, response.headers.get("retry-after")
                        for line in response.iter_lines():
                            if not line.startswith("data:"):
                                continue
                            data = line.removeprefix("data:").strip()
                            self.started.set()
                            if data == "[DONE]":
                                done = True
                            elif "error" in json.loads(data):
                                errors.append(data)
                except httpx.HTTPError as error:  # a connection cut or refused: the test fails on it below
                    errors.append(repr(error))
                self.results.append(
                    {"status": status, "done": done, "errors": errors, "retry_after": retry_after,
                     "began": began, "ended": time.time()}
                )  # fmt: skip
                if status == 503 and retry_after:
                    time.sleep(min(float(retry_after), 2.0))

    def __enter__(self) -> Streams:
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(2)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)


def test_draining_a_worker_moves_its_replica_and_cuts_no_stream() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="pd-drain-state-", dir="/tmp"))
    keys = _governance(state_dir / "governance.yaml")
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
        "ingress": {"port": port, "cpus": 0.25, "drain_timeout_s": 30},
        "admin": {"port": admin_port},
        "metrics": {"port": metrics_port},
    }
    config_file = state_dir / "drain.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, state_dir, ignore_errors=True)
        cluster = cleanup.enter_context(ray_cluster())
        holder = subprocess.Popen(
            [str(PYTHON), "-c", HOLDER, cluster.address],
            env=cluster.env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            environ: dict[str, str | None] = {
                "PADDOCK_RAY_ADDRESS": cluster.address,
                **{k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")},
            }
            head_id = cluster.node_id(cluster.head.temp_dir)
            # The worker joins once the ingress runs on the head (`paddock serve` is ready once the model is too).
            joiner = threading.Thread(target=join_worker_after_ingress, args=(cluster, head_id), daemon=True)
            joiner.start()
            with serve_stack(config_file, ports, keys, state_dir, environ, "paddock-drain-e2e.log") as stack:
                joiner.join(timeout=60)
                worker = cluster.nodes[-1]
                worker_id = cluster.node_id(worker.temp_dir)
                placed = cluster.placement()["replicas"]
                assert [r for r in placed[worker_id] if "model-" in r], placed  # type: ignore[index]
                assert any("Ingress" in r for r in placed[head_id]), placed  # type: ignore[index]
                holder.stdin.close()  # type: ignore[union-attr]  # the head can host a replacement now
                holder.wait(timeout=60)

                with Streams(stack) as streams:
                    assert streams.started.wait(120), "no stream started"
                    began = time.time()
                    drain = subprocess.run(
                        [str(ROOT / ".venv/bin/paddock"), "node", "drain", "--deadline-s", str(DEADLINE_S)]
                        + ["--address", cluster.address, "--temp-dir", str(worker.temp_dir)],
                        env=cluster.env,
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=DEADLINE_S + 60,
                    )
                    took = time.time() - began
                    # The replacement on the head, announced (it may still be starting when the drain returns:
                    # Serve stops the old replica by the deadline less its graceful shutdown at the latest).
                    wait_for("the replacement", lambda: len(stack.replica_urls(CHAT)) > 1, 900, 0.5)
                assert drain.returncode == 0, drain.stderr
                assert "drained in" in drain.stderr and took < DEADLINE_S, (took, drain.stderr)

                placed = cluster.placement()["replicas"]
                assert not placed.get(worker_id), placed
                assert [r for r in placed[head_id] if "model-" in r], placed  # type: ignore[index]
                assert len(stack.replica_urls(CHAT)) == 2  # the first replica, then its replacement

                results = streams.results
                served = [r for r in results if r["status"] == 200]
                assert served and all(r["done"] and not r["errors"] for r in served), results
                assert all(r["status"] == 200 or (r["status"] == 503 and r["retry_after"]) for r in results), results
                assert [r for r in served if r["began"] < began < r["ended"]], "no stream ran when the drain began"  # type: ignore[operator]
                stopped = stop_time(cluster.head.temp_dir)
                in_flight = [r for r in served if r["began"] < stopped < r["ended"]]  # type: ignore[operator]
                assert in_flight, f"no stream ran when Serve began to stop the old replica ({stopped})"
                print(
                    f"drain: {took:.0f}s (deadline {DEADLINE_S}s); old replica stopped {stopped - began:.0f}s in, "
                    f"{len(in_flight)} stream(s) in flight then; {len(served)} streams, all [DONE]; {drain.stderr.strip()}"
                )

                with stack.http(timeout=120) as http:
                    reply = http.post("/v1/chat/completions", json={**STREAM, "stream": False, "max_tokens": 4})
                assert reply.status_code == 200, reply.text
        finally:
            if holder.poll() is None:
                holder.kill()
