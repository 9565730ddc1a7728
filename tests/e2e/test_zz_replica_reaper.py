"""A model replica's Ray worker killed by SIGKILL takes its engine processes with it (service/serve/reaper.py).

The stack is its own (``paddock serve``, SmolLM2 only), started for this module: Ray 2.60 kills a dead
worker's process group itself while its raylet lives, so this stack turns that off
(``RAY_process_group_cleanup_enabled=0``, as on a Ray without it) and what is measured is Paddock's
reaper alone, which also covers the case Ray's cleanup cannot: a raylet that died too.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import yaml

from harness.ports import free_port
from tests.e2e.conftest import CAPITAL_QUESTION, CHAT, CONFIG, Stack, serve_stack, write_governance

pytestmark = pytest.mark.e2e

BOUND_S = 10.0  # SIGKILL of the replica's worker -> its EngineCore and vLLM workers gone (reaper grace: 2 s)
REPLACE_TIMEOUT_S = 420


def replica_worker(url: str) -> psutil.Process:
    """The Ray worker process of the replica listening at ``url``."""
    port = urlparse(url).port
    (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    return psutil.Process(pid)


def reapers_of(owners: set[int]) -> list[psutil.Process]:
    """The reaper processes watching any of ``owners``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "service.serve.reaper" in cmdline and "--owner" in cmdline[:-1]:
            owner = cmdline[cmdline.index("--owner") + 1]
            if owner.isdigit() and int(owner) in owners:
                found.append(process)
    return found


def running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {process.name()} ppid={process.ppid()} rss={process.memory_info().rss >> 20}MiB"
    except psutil.Error:
        return f"{process.pid} (gone)"


@pytest.fixture(scope="module")
def reaped_stack() -> Iterator[Stack]:
    state_dir = Path(tempfile.mkdtemp(prefix="pd-state-", dir="/tmp"))
    ports = (free_port(), free_port(), free_port())
    keys = write_governance(state_dir / "governance.yaml")
    config = yaml.safe_load(CONFIG.read_text())
    config["models"] = [model for model in config["models"] if model["id"] == CHAT]
    config |= {"ingress": {"port": ports[0]}, "admin": {"port": ports[1]}, "metrics": {"port": ports[2]}}
    config_file = state_dir / "paddock.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    environ: dict[str, str | None] = {"RAY_process_group_cleanup_enabled": "0"}
    with serve_stack(config_file, ports, keys, state_dir, environ, log_name="pd-e2e-reaper.log") as stack:
        raylet_log = next(stack.ray_dir.glob("session_*/logs/raylet.out")).read_text()
        assert "process group cleanup is DISABLED" in raylet_log, "Ray's own cleanup would hide the reaper's"
        yield stack
        owners = {p.pid for p in psutil.Process(stack.process.pid).children(recursive=True)}
        reapers = reapers_of(owners)
    stopped = time.monotonic()  # the stack stopped: the replica's clean stop ends its reaper
    while any(running(r) for r in reapers) and time.monotonic() - stopped < BOUND_S:
        time.sleep(0.1)
    left = [r for r in reapers if running(r)]
    for reaper in left:
        reaper.kill()
    assert not left, f"reapers outlived the stack: {[describe(r) for r in left]}"


def test_sigkilled_replica_worker_takes_its_engine_processes(reaped_stack: Stack) -> None:
    stack = reaped_stack
    (url,) = stack.replica_urls(CHAT)
    worker = replica_worker(url)
    engine = [p for p in worker.children(recursive=True) if p.name().startswith("VLLM::")]
    descendants = worker.children(recursive=True)
    assert any(p.name() == "VLLM::EngineCore" for p in engine), [describe(p) for p in descendants]
    try:
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        while any(running(p) for p in descendants):
            alive = [describe(p) for p in descendants if running(p)]
            assert time.monotonic() - killed < BOUND_S, f"left running {BOUND_S:.0f}s after the replica died: {alive}"
            time.sleep(0.05)
        took = time.monotonic() - killed
        print(f"{', '.join(p.name() for p in descendants)} gone {took:.2f}s after the replica worker's SIGKILL")
    finally:
        for process in descendants:  # if the reaper failed, do its work: these are this stack's processes
            if running(process):
                process.kill()

    with stack.http(timeout=120) as http:
        deadline = time.monotonic() + REPLACE_TIMEOUT_S
        while True:
            assert time.monotonic() < deadline, "the chat replica was not replaced"
            if len(stack.replica_urls(CHAT)) > 1:
                reply = http.post("/v1/chat/completions", json=CAPITAL_QUESTION)
                if reply.status_code == 200:
                    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
                    break
            time.sleep(2)
    print(f"replaced and answering {time.monotonic() - killed:.0f}s after the SIGKILL")
    new_worker = replica_worker(stack.replica_urls(CHAT)[-1])
    assert new_worker.pid != worker.pid
    assert reapers_of({new_worker.pid}), "the new replica has no reaper"
