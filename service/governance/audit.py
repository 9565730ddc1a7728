"""The tamper-evident audit log: one hash-chained writer per process, in rotated JSON Lines segments.

The format (chains, segments, sealed heads, the manifest) is described in
``audit_chain.py``; verification is ``audit_verify.py`` (re-exported here);
rotation limits and retention are ``audit_retention.py``. Each record is one
line written by one ``os.write``: once ``write`` returns, the line is in the
kernel and survives the process being killed. After each record the writer
rewrites its sealed head in place (one ``pwrite``); a writer registers its
chain in the directory's manifest when it opens, each new segment when it
rotates, and its last record when it closes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from service.governance.audit_chain import (
    END,
    FORMAT,
    GENESIS,
    MANIFEST,
    NOT_ECHOED,
    SEGMENT_END,
    SEGMENT_START,
    START,
    WRITER_END,
    WRITER_SEGMENT,
    WRITER_START,
    UtcClock,
    canonical,
    digest,
    head_path,
    seal,
    segment_path,
)
from service.governance.audit_manifest import append_manifest
from service.governance.audit_retention import Rotation, prune
from service.governance.audit_verify import NO_END, Problem, verify, verify_file

__all__ = [
    "GENESIS",
    "NO_END",
    "AuditLog",
    "Problem",
    "Rotation",
    "UtcClock",
    "append_manifest",
    "read_key_file",
    "redact",
    "verify",
    "verify_file",
]

log = logging.getLogger(__name__)
_RETRY_S = 60.0  # after a rotation that could not open its next segment


def default_writer_id() -> str:
    """``<hostname>-<pid>-<unix start time in ms>``, sanitised to ``[A-Za-z0-9._-]``."""
    return sanitise_writer_id(f"{socket.gethostname()}-{os.getpid()}-{time.time_ns() // 1_000_000}")


def sanitise_writer_id(writer_id: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", writer_id)
    if not clean.strip("._-"):
        raise ValueError(f"unusable audit writer id {writer_id!r}")
    return clean


def read_key_file(path: Path) -> bytes:
    """The HMAC key: the file's bytes, exactly (use the same function when writing and verifying)."""
    key = Path(path).read_bytes()
    if not key:
        raise ValueError(f"{path}: the audit key file is empty")
    return key


def _lock_head(fd: int) -> None:
    """Lock a writer's head for its lifetime; a retention pass probing it holds it for microseconds."""
    for _ in range(1000):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.001)
    log.warning("audit head %d stayed locked: retention may take this writer for a dead one", fd)


def _open_segment(path: Path) -> int:
    # O_EXCL: a second chain appended to an existing file would make the file fail verification.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o640)


class AuditLog:
    """One writer's hash chain, appended to ``<directory>/audit-<writer_id>+<segment>.jsonl``, its sealed head
    rewritten after every record, its start, segments and end on the directory's manifest. Thread-safe.

    ``rotation`` (none: one segment, never rotated or pruned) starts a new segment by size and by time, the chain
    running on across them, and prunes the directory's oldest segments beyond its limits. ``clock`` is the time
    (seconds since the epoch) rotation by time follows.
    """

    def __init__(
        self,
        directory: Path,
        *,
        key: bytes | None = None,
        stdout: TextIO | None = None,
        writer_id: str | None = None,
        rotation: Rotation | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key is not None and not key:
            raise ValueError("the audit HMAC key is empty")
        self.writer_id = sanitise_writer_id(writer_id) if writer_id is not None else default_writer_id()
        self.directory = Path(directory)
        self._key, self._stdout, self._rotation, self._clock = key, stdout, rotation, clock
        self._lock = threading.Lock()
        self._seq, self._prev, self._unechoed = 0, GENESIS, 0
        self._pid = os.getpid()
        self._broken: str | None = None
        self._failed_until = 0.0  # a failed rotation is tried again after _RETRY_S
        self._now = UtcClock()
        self._alg = "sha256" if key is None else "hmac-sha256"
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.segment = 0
        self.path = segment_path(self.directory, self.writer_id, 0)
        self._fd: int | None = _open_segment(self.path)
        self._head: int | None = None
        self._new_segment()
        try:
            self._head = os.open(
                head_path(self.directory, self.writer_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640
            )
            _lock_head(self._head)  # held while this writer runs: retention tells it is alive
            start = self.write({"event": START, "segment": 0, **self._identity()})
            entry = {"event": WRITER_START, "chain_writer": self.writer_id, "file": self.path.name, "segment": 0}
            append_manifest(self.directory, {**entry, "start_hash": start["hash"]}, key)
        except BaseException:
            self._close_files()
            raise
        self._retain()

    def _identity(self) -> dict[str, Any]:
        return {"hash_alg": self._alg, "format": FORMAT, "host": socket.gethostname(), "pid": self._pid}

    def _new_segment(self) -> None:
        """The current segment is new: nothing in it yet, and rotated by time at the next period."""
        self._size = self._records = 0
        self._anchor_due = False
        self._schedule()

    def _schedule(self) -> None:
        interval = self._rotation.interval_s if self._rotation else 0.0
        self._rotate_at = (self._clock() // interval + 1) * interval if interval > 0 else float("inf")

    def write(self, record: dict[str, Any], *, echo: bool = True) -> dict[str, Any]:
        """Append ``record`` (plus ``writer``, ``seq``, ``prev``, ``hash``; ``time`` if missing); return it.

        ``echo=False`` keeps the record off the stdout copy (it is still chained in the file; the next record on
        stdout says how many were kept off it, as ``not_echoed``).
        """
        full = dict(record)
        full.pop("hash", None)
        full.pop(NOT_ECHOED, None)
        if "time" not in full:
            full["time"] = self._now()
        with self._lock:
            if self._anchor_due:  # a rotation whose anchor could not be written yet
                self._open_anchor()
            if self._clock() >= self._rotate_at:
                if self._records > 1:  # more than the segment's first record
                    self._rotate("time")
                else:
                    self._schedule()
            self._append(full, echo)
            limit = self._rotation.max_file_bytes if self._rotation else 0
            if limit and self._size >= limit:
                self._rotate("size")
            return full

    def _append(self, full: dict[str, Any], echo: bool = True) -> dict[str, Any]:
        """Chain and write one record, then its sealed head; the caller holds the lock."""
        if self._fd is None:
            raise ValueError(f"audit log {self.path} is closed")
        if self._broken is not None:
            raise OSError(self._broken)
        if os.getpid() != self._pid:
            raise RuntimeError("AuditLog used in a forked child: create a new AuditLog in each process")
        seq = self._seq
        shipped = self._stdout is not None and echo
        if shipped and self._unechoed:
            full[NOT_ECHOED] = self._unechoed
        full["writer"], full["seq"], full["prev"] = self.writer_id, seq, self._prev
        text, data = canonical(full)
        hashed = digest(data, self._key)
        line = data[:-1] + b',"hash":"' + hashed.encode() + b'"}\n'
        written = os.write(self._fd, line)  # one unbuffered write: in the kernel once it returns
        if written != len(line):
            self._broken = f"{self.path}: short write ({written} of {len(line)} bytes); the chain is broken"
            raise OSError(self._broken)
        self._seq += 1
        self._size += written
        self._records += 1
        self._prev = full["hash"] = hashed
        if self._stdout is not None:
            self._unechoed = 0 if echo else self._unechoed + 1
        if shipped:
            assert self._stdout is not None
            self._stdout.write(text[:-1] + ',"hash":"' + hashed + '"}\n')
            self._stdout.flush()
        if self._head is not None:  # after the record: a head never names a record the file lacks
            try:
                os.pwrite(self._head, seal(self.writer_id, seq, hashed, self._key), 0)
            except OSError as error:
                raise OSError(f"{self.path}: record {seq} written, but its sealed head was not: {error}") from error
        return full

    def _rotate(self, why: str) -> None:
        """End this segment and open the next, its anchor chained to the end; then apply retention. The caller
        holds the lock. A failure is logged, never raised: the record that asked for it is already written."""
        if self._clock() < self._failed_until:
            return
        following = segment_path(self.directory, self.writer_id, self.segment + 1)
        try:
            fd = _open_segment(following)  # first: if it cannot be opened, this segment stays open
        except OSError as error:
            log.error("audit log %s: cannot open its next segment %s: %s", self.path, following.name, error)
            self._failed_until = self._clock() + _RETRY_S
            return
        old, old_fd = self.path, self._fd
        assert old_fd is not None
        try:
            self._append({"event": SEGMENT_END, "time": self._now(), "segment": self.segment, "reason": why})
        except OSError as error:
            log.error("audit log %s: could not end the segment: %s", old, error)
            os.close(fd)
            following.unlink(missing_ok=True)
            self._failed_until = self._clock() + _RETRY_S
            return
        try:
            os.fsync(old_fd)  # a closed segment is on disk before retention may count on it
        except OSError as error:
            log.error("audit log %s: fsync of the ended segment failed: %s", old, error)
        self._fd, self.path, self.segment = fd, following, self.segment + 1
        os.close(old_fd)
        self._new_segment()
        self._anchor_due = True
        try:
            self._open_anchor()
        except OSError as error:  # retried before the next record, which cannot come before its anchor
            log.error("audit log %s: could not write its anchor yet: %s", self.path, error)

    def _open_anchor(self) -> None:
        """Write the new segment's anchor, put the segment on the manifest and apply retention."""
        anchor = self._append(
            {"event": SEGMENT_START, "time": self._now(), "segment": self.segment, **self._identity()}
        )
        self._anchor_due = False
        entry = {"event": WRITER_SEGMENT, "chain_writer": self.writer_id, "file": self.path.name}
        try:
            append_manifest(
                self.directory, {**entry, "segment": self.segment, "anchor_hash": anchor["hash"]}, self._key
            )
        except OSError as error:  # the chain runs on; verify will say the segment is not on the manifest
            log.error("audit manifest %s: could not record segment %s: %s", MANIFEST, self.path.name, error)
        self._retain()

    def _retain(self) -> None:
        if self._rotation is None:
            return
        try:
            prune(self.directory, self._rotation, self._key, active=self.path)
        except OSError as error:
            log.error("audit retention in %s failed: %s", self.directory, error)

    def close(self) -> None:
        """Write ``chain.end``, flush it to disk, record the end on the manifest and close the files. Idempotent."""
        with self._lock:
            if self._fd is None:
                return
            try:
                if os.getpid() == self._pid and self._broken is None:
                    end = self._append({"event": END, "time": self._now()})
                    os.fsync(self._fd)
                    if self._head is not None:
                        os.fsync(self._head)
                    self._record_end(end)
            finally:
                self._close_files()

    def _record_end(self, end: dict[str, Any]) -> None:
        entry = {
            "event": WRITER_END,
            "chain_writer": self.writer_id,
            "file": self.path.name,
            "head_seq": end["seq"],
            "head_hash": end["hash"],
        }
        try:
            append_manifest(self.directory, entry, self._key)
        except OSError as error:  # the chain itself is closed and whole; verify will miss the manifest's end
            log.error("audit manifest %s: could not record the end of %s: %s", MANIFEST, self.path.name, error)

    def _close_files(self) -> None:
        for fd in (self._fd, self._head):
            if fd is not None:
                os.close(fd)  # (closing the head releases its lock)
        self._fd = self._head = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


REDACTED = "[REDACTED]"
_SECRET_NAME = r"[A-Za-z0-9_.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key)(?:[_-]?(?:access[_-])?key)?"
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL),
    re.compile(r"(?<![A-Za-z0-9])(?:pk|sk)-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
]
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_ASSIGNMENT = re.compile(rf"\b({_SECRET_NAME})\b([\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)", re.IGNORECASE)


def _redact_value(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    """Replace keys, tokens, private keys and ``password=``-style values in free text with ``[REDACTED]``."""
    for pattern in _SECRETS:
        text = pattern.sub(REDACTED, text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _ASSIGNMENT.sub(_redact_value, text)
