"""When a writer starts a new segment, and which segments retention deletes so that the directory stays bounded.

Retention runs in a writer, when it opens and after each rotation, under a
directory-wide lock (``audit.retention.lock``, ``flock``; a pass already
running elsewhere is not waited for). While the directory's segments exceed
``max_total_bytes`` or ``max_files``, it deletes the oldest segment that may
go: the first remaining segment of some writer, which either ends its part of
the chain (``segment.end``, ``chain.end``) or belongs to a writer that is gone.
A live writer holds an exclusive ``flock`` on its sealed head for as long as it
runs, so a crashed one is told from a running one without asking it. Each
deletion is first recorded on the manifest (``writer.pruned``: the file, its
last ``seq`` and ``hash``), so the verifier can tell a pruned segment from a
deleted one and check the chain from the next segment's anchor.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.governance.audit_chain import (
    END,
    SEGMENT_END,
    WRITER_PRUNED,
    head_path,
    parse_chain_name,
)
from service.governance.audit_manifest import append_manifest, last_line

log = logging.getLogger(__name__)
RETENTION_LOCK = "audit.retention.lock"
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Rotation:
    """A writer's segment size and period, and what retention keeps of the directory (0: no limit)."""

    max_file_bytes: int = 64 * MiB  # a segment is rotated once it holds this much (0: never by size)
    interval_s: float = 86400.0  # and at each multiple of this since the epoch, UTC (daily: midnight; 0: never)
    max_total_bytes: int = 1024 * MiB  # retention: the directory's segments together, at most (0: no limit)
    max_files: int = 0  # retention: at most this many segments (0: no limit)

    @property
    def retains(self) -> bool:
        return bool(self.max_total_bytes or self.max_files)


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    writer: str
    number: int | None  # None: a format 2 file (the writer's whole chain, unsegmented)
    size: int
    mtime: float


def list_segments(directory: Path) -> dict[str, list[Segment]]:
    """Every chain file in ``directory``, by writer, in segment order."""
    groups: dict[str, list[Segment]] = {}
    for path in directory.glob("audit-*.jsonl"):
        parsed = parse_chain_name(path.name)
        if parsed is None:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # pruned by someone else meanwhile
            continue
        groups.setdefault(parsed[0], []).append(Segment(path, parsed[0], parsed[1], stat.st_size, stat.st_mtime))
    for segments in groups.values():
        segments.sort(key=lambda s: -1 if s.number is None else s.number)
    return groups


def writer_alive(directory: Path, writer: str) -> bool:
    """Whether ``writer`` still runs: its head is locked (a writer locks it for as long as it runs)."""
    try:
        fd = os.open(head_path(directory, writer), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (also drops the probe's own shared lock)
    return False


def last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of a chain file, if it has one that parses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        tail = last_line(fd)
    finally:
        os.close(fd)
    if tail is None:
        return None
    line, complete = tail
    if not complete:  # a torn last line: the one before it, if the tail holds it
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class _Pass:
    """One retention pass over a directory (the caller holds the retention lock)."""

    def __init__(self, directory: Path, rotation: Rotation, key: bytes | None, active: Path | None) -> None:
        self.directory, self.rotation, self.key = directory, rotation, key
        self.active = active.resolve() if active is not None else None
        self.groups = list_segments(directory)
        self.total = sum(s.size for group in self.groups.values() for s in group)
        self.count = sum(len(group) for group in self.groups.values())
        self.alive: dict[str, bool] = {}
        self.lasts: dict[Path, dict[str, Any] | None] = {}

    def over(self) -> bool:
        limits = self.rotation
        return bool(
            (limits.max_total_bytes and self.total > limits.max_total_bytes)
            or (limits.max_files and self.count > limits.max_files)
        )

    def _alive(self, writer: str) -> bool:
        if writer not in self.alive:
            self.alive[writer] = writer_alive(self.directory, writer)
        return self.alive[writer]

    def _last(self, segment: Segment) -> dict[str, Any] | None:
        if segment.path not in self.lasts:
            self.lasts[segment.path] = last_record(segment.path)
        return self.lasts[segment.path]

    def _may_go(self, segment: Segment) -> bool:
        if self.active is not None and segment.path.resolve() == self.active:
            return False
        last = self._last(segment)
        if last is not None and last.get("event") in (SEGMENT_END, END):
            return True  # its part of the chain is complete
        # mid-rotation, or a writer that died: only a format 3 writer's head lock tells a dead one
        return segment.number is not None and not self._alive(segment.writer)

    def oldest(self) -> Segment | None:
        candidates = [group[0] for group in self.groups.values() if group and self._may_go(group[0])]
        return min(candidates, key=lambda s: (s.mtime, s.writer, s.number or 0), default=None)

    def prune(self, segment: Segment) -> None:
        last = self._last(segment) or {}
        entry = {
            "event": WRITER_PRUNED,
            "chain_writer": segment.writer,
            "file": segment.path.name,
            "segment": segment.number,
            "last_seq": last.get("seq"),
            "last_hash": last.get("hash"),
        }
        append_manifest(self.directory, entry, self.key)  # on record before the file goes
        segment.path.unlink(missing_ok=True)
        self.groups[segment.writer].pop(0)
        self.total -= segment.size
        self.count -= 1
        if not self.groups[segment.writer] and not self._alive(segment.writer):
            head_path(self.directory, segment.writer).unlink(missing_ok=True)  # nothing left of that writer


def prune(directory: Path, rotation: Rotation, key: bytes | None, active: Path | None = None) -> list[str]:
    """Delete the oldest segments that may go until the directory is within ``rotation``'s limits; return their
    names. ``active`` is the caller's own open segment. Another process's pass in progress: nothing is done."""
    if not rotation.retains:
        return []
    fd = os.open(directory / RETENTION_LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        run = _Pass(directory, rotation, key, active)
        pruned: list[str] = []
        while run.over():
            segment = run.oldest()
            if segment is None:
                log.warning(
                    "audit directory %s holds %d bytes in %d segments, over its retention limits, but every "
                    "remaining segment is still being written",
                    directory,
                    run.total,
                    run.count,
                )
                break
            run.prune(segment)
            pruned.append(segment.path.name)
        if pruned:
            log.info("audit retention pruned %d segment(s) in %s: %s", len(pruned), directory, ", ".join(pruned))
        return pruned
    finally:
        os.close(fd)
