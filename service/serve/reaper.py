"""A process-tree reaper: a replica's descendants (vLLM's EngineCore, its workers) end with the replica.

vLLM's EngineCore does not watch its parent, and a vLLM worker notices its EngineCore's death only once
it has loaded its model. Ray 2.60 kills a dead Ray worker's process group while its raylet lives, but
not when the raylet goes too (a hard stop of the serving processes): the Ray worker then ends only its
direct children, and vLLM's workers (gigabytes each) are left under pid 1 until they notice, a minute
or more for one still loading. Nor does Ray do it where its process-group cleanup is off.

:class:`Reaper` is the replica's half. ``start`` runs this module (the stdlib and psutil only: no Ray,
vLLM or service import), which forks the watcher and exits: the watcher is no child of the replica,
so what kills the replica's children (Ray, on a worker's exit) does not kill it, and it has a session
of its own, so a signal to the replica's process group does not reach it. The replica keeps the only
write end of a pipe whose read end the watcher holds. The watcher records the replica's descendants
every ``interval_s`` (pid and create time: a reused pid is never taken for one of them). When the pipe
reaches EOF (the replica's process ended, however it ended) or the replica's pid is gone, it sends
SIGTERM to every recorded process still alive and to their own descendants, SIGKILL after
``grace_s`` to what is left, and exits. ``stop`` (a clean stop, after the engine shut down) writes one
byte first: the watcher then exits at once and leaves the processes to their owner.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO

import psutil

INTERVAL_S = 1.0  # how often the watcher records the replica's descendants
GRACE_S = 2.0  # between SIGTERM and SIGKILL
_STOP = b"s"
_SAME_START_S = 0.005  # create times come from /proc in clock ticks: the same process reads the same


class Reaper:
    """The replica's handle on its watcher: ``start`` before the engine starts, ``stop`` after it shut down."""

    def __init__(self, interval_s: float = INTERVAL_S, grace_s: float = GRACE_S) -> None:
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.pid: int | None = None  # the watcher's
        self._watcher: psutil.Process | None = None
        self._pipe: int | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        owner = psutil.Process()
        # os.pipe's ends are close-on-exec: the watcher gets the read end by pass_fds, and what this process
        # spawns (vLLM spawns its EngineCore under Ray) does not inherit the write end, which would hold off EOF.
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", __name__, "--fd", str(read_end), "--owner", str(owner.pid)]
        command += ["--owner-created", repr(owner.create_time()), "--interval", str(self.interval_s)]
        command += ["--grace", str(self.grace_s)]
        try:
            self._watcher = _launch(command, read_end, timeout_s)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self.pid = self._watcher.pid
        self._pipe = write_end

    def stop(self, timeout_s: float = 5.0) -> None:
        """Tell the watcher to exit without killing anything, and wait for it to end (else SIGKILL it)."""
        if self._pipe is None or self._watcher is None:
            return
        try:
            os.write(self._pipe, _STOP)
        except OSError:  # the watcher is gone already
            pass
        finally:
            os.close(self._pipe)
            self._pipe = None
        if _wait([self._watcher], timeout_s):
            _signal([self._watcher], signal.SIGKILL)


def _launch(command: list[str], read_end: int, timeout_s: float) -> psutil.Process:
    """Run the launcher, which forks the watcher, prints its pid and exits; returns the watcher."""
    launcher = subprocess.Popen(
        command, pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        out, _ = launcher.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
        raise
    if launcher.returncode != 0 or not out.strip().isdigit():
        raise RuntimeError(f"the reaper did not start (exit status {launcher.returncode})")
    return psutil.Process(int(out))


def _same(process: psutil.Process, created: float) -> bool:
    """Whether ``process`` is still the one created at ``created`` (not a reused pid), and not a zombie."""
    try:
        return abs(process.create_time() - created) < _SAME_START_S and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _alive(pid: int, created: float) -> bool:
    try:
        return _same(psutil.Process(pid), created)
    except psutil.Error:
        return False


def _descendants(pid: int, created: float | None = None) -> dict[int, float]:
    """pid -> create time of ``pid``'s descendants now (none if ``pid`` is gone or another process now)."""
    found: dict[int, float] = {}
    try:
        root = psutil.Process(pid)
        if created is not None and not _same(root, created):
            return found
        children = root.children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            found[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return found


def record(owner: int, recorded: dict[int, float]) -> None:
    """Add the owner's descendants now to ``recorded``, and drop the recorded processes that have ended."""
    recorded.update(_descendants(owner))
    recorded.pop(os.getpid(), None)
    for pid, created in list(recorded.items()):
        if not _alive(pid, created):
            del recorded[pid]


def _verified(recorded: dict[int, float]) -> list[psutil.Process]:
    """The recorded processes that are still the same processes, with their own descendants now."""
    everything = dict(recorded)
    for pid, created in recorded.items():
        everything.update(_descendants(pid, created))
    everything.pop(os.getpid(), None)
    processes = []
    for pid, created in everything.items():
        try:
            process = psutil.Process(pid)
        except psutil.Error:
            continue
        if _same(process, created):
            processes.append(process)
    return processes


def reap(recorded: dict[int, float], grace_s: float, log: IO[str] = sys.stderr) -> list[int]:
    """SIGTERM every recorded process, SIGKILL what is left after ``grace_s``; returns the pids signalled."""
    processes = _verified(recorded)
    if not processes:
        return []
    pids = ", ".join(str(p.pid) for p in processes)
    log.write(f"paddock reaper: SIGTERM for {pids}\n")
    _signal(processes, signal.SIGTERM)
    alive = _wait(processes, grace_s)
    if alive:
        log.write(f"paddock reaper: SIGKILL for {', '.join(str(p.pid) for p in alive)}\n")
        _signal(alive, signal.SIGKILL)
        _wait(alive, 1.0)
    log.flush()
    return [p.pid for p in processes]


def _signal(processes: Sequence[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(sig)  # psutil refuses a pid reused since `process` was made
        except psutil.Error:
            continue


def _wait(processes: Sequence[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still running after up to ``timeout_s`` (a zombie has ended: its memory is freed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in processes if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(fd: int, owner: int, owner_created: float, interval_s: float, grace_s: float) -> int:
    """Record the owner's descendants until the pipe ends; reap them unless the owner said stop first."""
    recorded: dict[int, float] = {}
    while _alive(owner, owner_created):  # else gone, even if a process it forked holds the write end
        record(owner, recorded)
        ready, _, _ = select.select([fd], [], [], interval_s)
        if ready:
            if os.read(fd, 1) == _STOP:
                return 0
            break  # EOF: the owner's end closed, so the owner exited
    sys.stderr.write(f"paddock reaper: process {owner} ended; stopping what it left\n")
    reap(recorded, grace_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.serve.reaper", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the read end of the owner's pipe")
    parser.add_argument("--owner", type=int, required=True, help="the owner's pid")
    parser.add_argument("--owner-created", type=float, required=True, help="the owner's create time")
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    parser.add_argument("--grace", type=float, default=GRACE_S)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe decides when the watcher ends
    watcher = os.fork()
    if watcher:  # the launcher: tell the owner who watches, and exit (the watcher is re-parented)
        print(watcher, flush=True)
        return 0
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the owner reads the launcher's stdout to its end
    os.close(devnull)
    return watch(args.fd, args.owner, args.owner_created, args.interval, args.grace)


if __name__ == "__main__":
    sys.exit(main())
