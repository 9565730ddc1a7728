"""Autoscaling under load, not only from zero (issue 15): a load step of concurrent streams raises a model
from one replica to two, the ingress routes to the new replica as soon as it announces itself, and when
the load ends Ray removes a replica while a stream runs on it, without cutting that stream or any other.

Its own stack (``paddock serve``, governance on): the Mistral twin with 1 to 2 replicas, a target of two
requests in flight per replica, and short delays so that each step takes seconds.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness import twins
from harness.ports import free_port
from tests.e2e.conftest import Stack, serve_stack
from tests.e2e.streams import Stream, long_stream
from tests.e2e.twins.conftest import ALLOWED_FIELDS, write_governance

pytestmark = pytest.mark.e2e

MODEL = "twin-mistral-autoscaled"
TARGET = 2  # target_ongoing_requests
LOAD = 6  # concurrent streams of the load step: 3 replicas' worth, capped at max_replicas 2
START_TIMEOUT_S = 600  # a second replica loading while the first serves the load, on 2 cores


@pytest.fixture(scope="module")
def scaling_stack() -> Iterator[Stack]:
    entry = twins.model_entry(twins.TWINS["mistral"], twins.make_twin("mistral"))
    entry["id"] = MODEL
    entry.pop("tool_call_parser", None)
    entry["max_model_len"] = 2048  # room for streams that outlast the scale-down
    entry["autoscaling"] = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": TARGET,
        "upscale_delay_s": 1,
        # Long enough that the load's own gaps never read as its end: at 2 s, a quiet host removed the starting
        # replica again within seconds, over and over (CI, 2026-12-03).
        "downscale_delay_s": 10,
    }
    port, admin_port, metrics_port = ports = free_port(), free_port(), free_port()
    state_dir = Path(tempfile.mkdtemp(prefix="pd-state-", dir="/tmp"))
    keys = write_governance(state_dir / "governance.yaml", [*ALLOWED_FIELDS, "ignore_eos"])
    config = {
        "models": [entry],
        "ingress": {"port": port, "cpus": 0.25, "drain_timeout_s": 120},  # a removed replica's stream may finish
        "admin": {"port": admin_port},
        "metrics": {"port": metrics_port},
    }
    config_file = state_dir / "autoscaling.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_stack(config_file, ports, keys, state_dir, log_name="paddock-autoscale-e2e.log") as stack:
        yield stack


class Load:
    """``LOAD`` clients, each streaming one short chat after another until stopped."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.streams: list[Stream] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(LOAD)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(300)

    def _client(self) -> None:
        while not self._stop.is_set():
            stream = Stream(self.stack, long_stream(MODEL, 48))
            self.streams.append(stream)
            stream.run()


def replicas(stack: Stack) -> int:
    with stack.http() as http:
        return int(http.get(f"/v1/models/{MODEL}").json()["status"]["replicas"])


def inflight(stack: Stack, url: str) -> int:
    return int(stack.replica_status(url)["inflight"])  # type: ignore[call-overload]


def start_time(stack: Stack, url: str) -> float:
    """How long the replica at ``url`` took to start, by its own log line (from its __init__ to announced)."""
    pattern = re.compile(rf"model {re.escape(MODEL)} replica \S+ ready at {re.escape(url)} in ([0-9.]+)s")
    [seconds] = [float(m.group(1)) for line in list(stack.log) for m in [pattern.search(line)] if m]
    return seconds


def wait_for(condition: object, timeout_s: float, what: str) -> float:
    """Poll ``condition()`` every 0.1 s; return when it first held (monotonic time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def test_a_load_step_adds_a_replica_and_its_end_removes_one_without_a_cut(scaling_stack: Stack) -> None:
    stack = scaling_stack
    assert replicas(stack) == 1
    [first] = stack.replica_urls(MODEL)

    load = Load(stack)
    step = time.monotonic()
    load.start()
    try:
        announced = wait_for(lambda: len(stack.replica_urls(MODEL)) == 2, START_TIMEOUT_S, "a second replica")
        [second] = [url for url in stack.replica_urls(MODEL) if url != first]
        routed = wait_for(lambda: inflight(stack, second) > 0, 30, "a request on the new replica")
    finally:
        load.stop()
    own_start = start_time(stack, second)
    print(
        f"load step -> second replica announced: {announced - step:.1f}s, of which its own start (__init__: "
        f"model files, engine, HTTP server) {own_start:.1f}s and the rest Ray's decision and worker start "
        f"{announced - step - own_start:.1f}s; announced -> first request on it: {routed - announced:.2f}s; "
        f"{len(load.streams)} streams"
    )
    assert routed - announced < 5.0  # the ingress's long poll hears of it at once; the load cycles every few s
    assert [s.problem() for s in load.streams if s.problem()] == []  # scaling up cut nothing

    # The end of the load: two long streams, one on each replica (the ingress picks the less busy one).
    # In flight, 2 / target 2 = one replica's worth: Ray removes one while its stream runs.
    body = long_stream(MODEL, 1500)  # seconds of tokens on any host: still running when a replica goes
    streams = [Stream(stack, body), Stream(stack, body)]
    threads = []
    for stream in streams:
        threads.append(stream.start())
        assert stream.first_token.wait(120) and not stream.failure, stream.failure
    assert sorted(inflight(stack, url) for url in (first, second)) == [1, 1]
    removed = wait_for(lambda: replicas(stack) == 1, 120, "the scale-down to one replica")
    for thread in threads:
        thread.join(300)
    print(
        f"scale-down {removed - step:.1f}s after the step; the long streams ended {[round(s.ended_at - removed, 1) for s in streams]}s after it"
    )
    assert all(s.ended_at > removed for s in streams)  # both were running when the replica went
    assert [s.problem() for s in streams] == ["", ""]
    assert replicas(stack) == 1
