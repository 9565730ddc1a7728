"""A Ray worker node lost under load (its raylet SIGKILLed): nothing hangs, leaks or outlives it.

The cluster of tests/e2e/ray_cluster.py: the ingress on the head, the chat model's replica on the worker, the
head's share of the model's resource released so that it can host a replacement. Streams run on the worker's
replica, two of them a tenant's whole ``max_concurrent_requests``, when the worker's raylet is SIGKILLed (its
Ray workers exit when their raylet dies; nothing on that node stops cleanly). Then:

* every stream ends within ``STREAM_END_S``: an in-band error event then ``[DONE]`` (the 200 was sent), or an
  error status if it had not started; never a hang or a cut connection;
* the ingress stops routing to the dead replica within ``ROUTING_S`` (its ``/v1/models`` replica count of the
  model drops to 0). What forward.py makes of a request that still reaches it: the refused or reset connection
  is ``UpstreamUnreachable``, so the replica is reported unreachable (this ingress skips it from then on; the
  registry drops it once its heartbeats stop) and the request is tried again; with no replica left it waits for
  one (``Directory.wake``, up to ``ingress.request_timeout_s``) or gets a 503 with ``retry-after`` (``could be
  reached``, ``no replica ready``). No client ever sees a connection error;
* Ray Serve starts a replacement on the head, which answers;
* the tenant's concurrency count is back to 0: two streams of it run at once again and a third is refused;
* every admitted request has its completed record, and ``paddock audit verify`` passes;
* the dead replica's engine processes (VLLM::EngineCore, its workers) are gone within ``REAPED_S`` (the
  replica's reaper, service/serve/reaper.py: the raylet that would have killed them is dead).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import Stack
from tests.e2e.ray_cluster import CHAT, ROOT, RayNode, model_on_worker, wait_for
from tests.e2e.streams import Stream, long_stream
from tests.e2e.test_zz_replica_reaper import describe, replica_worker, running

pytestmark = pytest.mark.e2e

CAP = 2  # the capped tenant's max_concurrent_requests
TENANTS = {
    "acme": {"id": "loss", "models": ["*"], "parameters": {"allowed_fields": ["ignore_eos"]}},
    "capped": {
        "id": "capped",
        "models": ["*"],
        "limits": {"max_concurrent_requests": CAP},
        "parameters": {"allowed_fields": ["ignore_eos"]},
    },
}
TOKENS = 900  # long enough to run well past the kill (max_model_len is 1024)
STREAM_END_S = 30.0  # raylet SIGKILL -> every stream on the node ended
ROUTING_S = 15.0  # raylet SIGKILL -> no new request reaches the dead replica (registry TTL 5 s + long poll)
REAPED_S = 20.0  # raylet SIGKILL -> the replica's Ray worker and engine processes gone
REPLACE_TIMEOUT_S = 900.0
PROBE = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}


@dataclass
class Probes:
    """Non-streamed chats one after another (tenant ``loss``), each with its times, status and error message."""

    stack: Stack
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[dict[str, Any]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def run(self) -> None:
        with self.stack.http(timeout=httpx.Timeout(REPLACE_TIMEOUT_S, connect=10)) as http:
            while not self.stop.is_set():
                began, status, message = time.monotonic(), 0, ""
                try:
                    reply = http.post("/v1/chat/completions", json=PROBE)
                    status = reply.status_code
                    message = "" if status == 200 else reply.json()["error"]["message"]
                    retry_after = reply.headers.get("retry-after")
                except (httpx.HTTPError, ValueError, KeyError) as error:
                    message, retry_after = repr(error), None
                self.results.append(
                    {"began": began, "ended": time.monotonic(), "status": status, "message": message,
                     "retry_after": retry_after}
                )  # fmt: skip
                time.sleep(0.2)

    def __enter__(self) -> Probes:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=REPLACE_TIMEOUT_S)


def raylet_of(node: RayNode) -> psutil.Process:
    """The raylet of ``node`` (its command line names the node's temp dir)."""
    found = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "raylet" and str(node.temp_dir) in " ".join(p.info["cmdline"] or [])
    ]
    (raylet,) = found
    return raylet


def ended_in_band(stream: Stream) -> bool:
    """An error event then [DONE] (the 200 was sent), or an error status (it had not started)."""
    if stream.failure:
        return stream.failure[:1] in "45" and stream.failure[:3].isdigit()
    events = stream.events
    return len(events) >= 2 and events[-1] == "[DONE]" and "error" in json.loads(events[-2])


def test_losing_a_worker_node_ends_its_streams_and_leaks_nothing() -> None:
    with model_on_worker("loss", TENANTS, {"drain_timeout_s": 30}) as deployed:
        stack, cluster, head_id = deployed.stack, deployed.cluster, deployed.head_id
        deployed.release_head()
        placed = cluster.placement()["replicas"]
        assert all("model-" not in r for r in placed[head_id]), placed  # type: ignore[attr-defined]
        (url,) = stack.replica_urls(CHAT)
        replica = replica_worker(url)
        engine = replica.children(recursive=True)
        assert any(p.name() == "VLLM::EngineCore" for p in engine), [describe(p) for p in engine]
        raylet = raylet_of(deployed.worker)

        streams = [Stream(stack, long_stream(CHAT, TOKENS), key) for key in ("capped", "capped", "acme", "acme")]
        threads = [s.start() for s in streams]
        for s in streams:
            assert s.first_token.wait(300) and not s.failure, s.failure
        with stack.http("capped", timeout=60) as http:  # the tenant's CAP leases are all held
            refused = http.post("/v1/chat/completions", json=PROBE)
        assert refused.status_code == 429, refused.text

        try:
            with Probes(stack) as probes:
                time.sleep(1.0)  # a probe or two served by the old replica
                raylet.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                with stack.http(timeout=10) as http:  # the ingress's own view: the replicas it routes to
                    while http.get(f"/v1/models/{CHAT}").json()["status"]["replicas"]:
                        assert time.monotonic() - killed < ROUTING_S, f"still routed to {ROUTING_S:.0f}s after"
                        time.sleep(0.1)
                routing_stopped = time.monotonic() - killed

                for thread in threads:
                    thread.join(timeout=max(0.0, killed + STREAM_END_S - time.monotonic()))
                hung = [s.events[-2:] for s in streams if not s.ended_at]
                assert not hung, f"streams still open {STREAM_END_S:.0f}s after the node died: {hung}"
                streams_ended = max(s.ended_at for s in streams) - killed
                assert all(ended_in_band(s) for s in streams), [(s.failure, s.events[-2:]) for s in streams]

                while any(running(p) for p in [replica, *engine]):
                    alive = [describe(p) for p in [replica, *engine] if running(p)]
                    assert time.monotonic() - killed < REAPED_S, f"left {REAPED_S:.0f}s after the node died: {alive}"
                    time.sleep(0.1)
                reaped = time.monotonic() - killed

                def served_after_death() -> bool:
                    return any(r["status"] == 200 and r["began"] > killed + reaped for r in probes.results)

                wait_for("the replacement", lambda: len(stack.replica_urls(CHAT)) > 1, REPLACE_TIMEOUT_S, 0.5)
                replaced = time.monotonic() - killed
                wait_for("a probe served by the replacement", served_after_death, 300, 0.5)
        finally:
            for process in [replica, *engine]:  # if the reaper failed, do its work: these are this test's processes
                if running(process):
                    process.kill()

        after = [r for r in probes.results if r["began"] > killed]
        assert all(r["status"] in (200, 503) for r in probes.results), probes.results
        assert all(r["retry_after"] for r in probes.results if r["status"] == 503), probes.results
        # A request that reached the dead replica (refused, reset) is retried: on no replica, it waits for one.
        dead_hits = [r for r in probes.results if r["status"] == 503 and "could be reached" in r["message"]]
        assert all(r["began"] < killed + routing_stopped for r in dead_hits), (routing_stopped, probes.results)
        waited = max((r["ended"] - r["began"] for r in after), default=0.0)

        placed = cluster.placement()
        assert not placed["nodes"].get(deployed.worker_id, {}).get("alive"), placed["nodes"]  # type: ignore[attr-defined]
        assert [r for r in placed["replicas"][head_id] if "model-" in r], placed  # type: ignore[index]

        # The capped tenant's count is 0 again: CAP streams at once, and one more refused.
        again = [Stream(stack, long_stream(CHAT, 64), "capped") for _ in range(CAP)]
        threads = [s.start() for s in again]
        for s in again:
            assert s.first_token.wait(300) and not s.failure, s.failure
        with stack.http("capped", timeout=60) as http:
            refused = http.post("/v1/chat/completions", json=PROBE)
        for thread in threads:
            thread.join(timeout=300)
        assert refused.status_code == 429, refused.text
        assert all(not s.problem() for s in again), [s.problem() for s in again]

        deadline = time.monotonic() + 10  # the completed record is written as the response ends
        while True:
            records = stack.audit_records()
            admitted = {r["request_id"] for r in records if r.get("phase") == "admitted"}
            completed = {r["request_id"] for r in records if r.get("phase") == "completed"}
            if admitted <= completed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert admitted <= completed, f"admitted, never completed: {admitted - completed}"
        # A stream the dead replica cut went out as a 200 and is on the record as an error, not as ok.
        cut = [r for r in records if r.get("phase") == "completed" and r["status"] == 200 and r["outcome"] == "error"]
        assert len(cut) >= sum(any('"error"' in e for e in s.events) for s in streams), cut
        verify = subprocess.run(
            [str(ROOT / ".venv/bin/paddock"), "audit", "verify", "--allow-open", "--allow-unauthenticated"]
            + [str(stack.state_dir / "audit")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        print(
            f"node loss: streams ended {streams_ended:.1f}s after the raylet's SIGKILL, in band; "
            f"ingress stopped routing to the dead replica {routing_stopped:.1f}s in ({len(dead_hits)} probe(s) "
            f"of {len(after)} got its 503; the longest waited {waited:.0f}s for the replacement); "
            f"replica worker and {len(engine)} engine processes gone {reaped:.1f}s in; "
            f"replacement announced {replaced:.0f}s in"
        )
