"""Stopping the processes a test or benchmark started, including what they left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


def stop_process_group(process: subprocess.Popen[Any], interrupt_timeout_s: float = 120) -> None:
    """Stop ``process``, started with ``start_new_session=True``, and everything in its process group.

    SIGINT first (so it can shut down cleanly), waiting up to ``interrupt_timeout_s``; then
    SIGTERM and SIGKILL to the group, two seconds apart, until the group is gone.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=interrupt_timeout_s)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(2)


def kill_strays(directory: Path) -> None:
    """SIGKILL processes that left the process group but still name ``directory`` (Ray's daemons)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
