"""A Ray worker pod's stop, on one machine: `paddock node drain` (the chart's preStop) moves the replicas away.

A two-node Ray cluster of its own (``ray start --head`` and ``ray start --address``, each ``--block`` as in a
KubeRay pod, with its own temp dir, ports and Ray token), and ``paddock serve`` deployed onto it through
``PADDOCK_RAY_ADDRESS``. The chat model needs the custom resource ``accelerator_type:paddock-drain``, which
both nodes have; a holder actor keeps the head's while Paddock deploys, and the worker joins once the ingress
runs on the head, so the ingress is on the head and the model replica on the worker (tests/e2e/ray_cluster.py). Then the holder lets go,
streams run on the worker's replica, and ``paddock node drain`` drains the worker: Ray Serve starts a
replacement on the head, and stops the old replica gracefully once the replacement runs or at the deadline
less its graceful shutdown (on a loaded machine the replacement takes minutes). Every stream ends with
``[DONE]``, at least one was in flight when the old replica began to stop, the replacement serves, and the
command returns before its deadline. Only this module's processes are stopped: the nodes by SIGTERM to
their ``ray start`` (what the kubelet sends), then whatever is left that names their temp dirs.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.e2e.ray_cluster import CHAT, ROOT, model_on_worker, wait_for

pytestmark = pytest.mark.e2e

DEADLINE_S = 300
STREAM = {
    "model": CHAT,
    "messages": [{"role": "user", "content": "Count slowly from one to one hundred."}],
    "max_tokens": 16,
    "ignore_eos": True,
    "stream": True,
}
TENANTS = {"acme": {"id": "drain", "models": ["*"], "parameters": {"allowed_fields": ["ignore_eos"]}}}


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
    with model_on_worker("drain", TENANTS, {"drain_timeout_s": 30}) as deployed:
        cluster, stack, worker = deployed.cluster, deployed.stack, deployed.worker
        head_id, worker_id = deployed.head_id, deployed.worker_id
        deployed.release_head()

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
