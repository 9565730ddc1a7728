"""The reaper on real processes: a parent that starts it and a few descendants, then dies by SIGKILL (or stops cleanly)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from service.serve.reaper import Reaper, reap

ROOT = Path(__file__).resolve().parents[2]
INTERVAL_S = 0.2
GRACE_S = 1.0
BOUND_S = 5.0  # SIGKILL of the parent -> every descendant gone: EOF at once (or one interval), the grace, SIGKILL

# The parent: starts the reaper, then a sleeper, a SIGTERM-ignoring child, and a child whose own child
# (the parent's grandchild) ignores SIGTERM; with "fork", also a forked child that holds the pipe's write end.
# It prints {"reaper": pid, "descendants": [pids]} once every one of them is ready, then waits for a line.
PARENT = """
import json, os, subprocess, sys, time
from service.serve.reaper import Reaper

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
SLEEPS = "import time; print('ready', flush=True); time.sleep(600)"
PARENT_OF = (
    "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', %r], stdout=subprocess.PIPE, text=True);"
    "c.stdout.readline(); print('ready', c.pid, flush=True); time.sleep(600)"
) % IGNORES_TERM

reaper = Reaper(interval_s=float(sys.argv[1]), grace_s=float(sys.argv[2]))
reaper.start()
descendants = []
for code in (SLEEPS, IGNORES_TERM, PARENT_OF):
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    words = child.stdout.readline().split()
    descendants += [child.pid] + [int(w) for w in words[1:]]
if "fork" in sys.argv[3:]:
    forked = os.fork()
    if forked == 0:
        time.sleep(600)
        os._exit(0)
    descendants.append(forked)
print(json.dumps({"reaper": reaper.pid, "descendants": descendants}), flush=True)
if sys.stdin.readline().strip() == "stop":
    reaper.stop()
    print(json.dumps({"stopped": reaper.pid}), flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], bound_s: float) -> float:
    """Seconds until every pid is gone; fails past ``bound_s``."""
    started = time.monotonic()
    while not all(gone(pid) for pid in pids):
        alive = [pid for pid in pids if not gone(pid)]
        assert time.monotonic() - started < bound_s, f"still alive after {bound_s}s: {alive}"
        time.sleep(0.05)
    return time.monotonic() - started


class Family:
    """The parent process and what it reported; every process is killed at the end, whatever happened."""

    def __init__(self, *extra: str) -> None:
        self.parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(INTERVAL_S), str(GRACE_S), *extra],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.parent.stdout is not None
        report = json.loads(self.parent.stdout.readline())
        self.reaper: int | None = report["reaper"]
        self.descendants: list[int] = report["descendants"]
        self.pids = [pid for pid in [self.reaper, *self.descendants] if pid is not None]
        self.processes = [psutil.Process(pid) for pid in self.pids]

    def command(self, line: str) -> dict[str, object]:
        assert self.parent.stdin is not None and self.parent.stdout is not None
        self.parent.stdin.write(line + "\n")
        self.parent.stdin.flush()
        return dict(json.loads(self.parent.stdout.readline()))

    def kill_parent(self, with_children: bool = False) -> None:
        """SIGKILL the parent; ``with_children``: its direct children first, as a Ray worker does on its way out."""
        children = psutil.Process(self.parent.pid).children() if with_children else []
        for child in children:
            child.kill()
        os.kill(self.parent.pid, signal.SIGKILL)
        self.parent.wait()

    def cleanup(self) -> None:
        if self.parent.poll() is None:
            self.parent.kill()
            self.parent.wait()
        for process in self.processes:
            try:
                process.kill()  # psutil refuses a pid reused since
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def unrelated() -> Iterator[psutil.Process]:
    """A process that was never a descendant of the parent."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield psutil.Process(process.pid)
    process.kill()
    process.wait()


@pytest.mark.parametrize(
    ("extra", "with_children"),
    [((), False), (("fork",), False), ((), True)],
    ids=["exec-children", "forked-child-holds-the-pipe", "direct-children-killed-first"],
)
def test_sigkilled_parent_takes_every_descendant(
    extra: tuple[str, ...], with_children: bool, unrelated: psutil.Process
) -> None:
    family = Family(*extra)
    try:
        time.sleep(3 * INTERVAL_S)  # the reaper has recorded them
        assert not any(gone(pid) for pid in family.descendants)
        family.kill_parent(with_children)
        took = wait_gone(family.pids, BOUND_S)
        print(f"every descendant and the reaper gone {took:.2f}s after the parent's SIGKILL")
        assert took >= GRACE_S * 0.9  # the SIGTERM-ignoring ones waited out the grace, then SIGKILL
        assert unrelated.is_running() and unrelated.status() != psutil.STATUS_ZOMBIE
    finally:
        family.cleanup()


def test_clean_stop_leaves_the_children_to_their_owner() -> None:
    family = Family()
    try:
        time.sleep(3 * INTERVAL_S)
        assert family.reaper is not None and family.command("stop") == {"stopped": family.reaper}
        assert gone(family.reaper)
        family.kill_parent()
        time.sleep(INTERVAL_S + GRACE_S + 1.0)
        assert not any(gone(pid) for pid in family.descendants)
    finally:
        family.cleanup()


def test_a_reused_pid_is_not_signalled(unrelated: psutil.Process) -> None:
    """A recorded pid whose process now started at another time is another process: left alone."""
    assert reap({unrelated.pid: unrelated.create_time() - 10.0}, grace_s=0.1) == []
    assert unrelated.is_running()


def test_stop_without_start_and_twice() -> None:
    reaper = Reaper()
    reaper.stop()
    reaper.start()
    assert reaper.pid is not None and not gone(reaper.pid)
    assert reaper.pid not in {child.pid for child in psutil.Process().children()}  # re-parented: no child of ours
    reaper.stop()
    reaper.stop()
    assert gone(reaper.pid)
