"""The tamper-evident audit log: one hash-chained JSON Lines file per writer process.

The format (chains, sealed heads, the manifest) is described in
``audit_chain.py``; verification is ``audit_verify.py`` (re-exported here).
Each record is one line written by one ``os.write``: once ``write`` returns,
the line is in the kernel and survives the process being killed. After each
record the writer rewrites its sealed head in place (one ``pwrite``); a writer
registers its chain in the directory's manifest when it opens and records its
last record there when it closes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from service.governance.audit_chain import (
    END,
    FORMAT,
    GENESIS,
    MANIFEST,
    MANIFEST_WRITER,
    START,
    WRITER_END,
    WRITER_START,
    canonical,
    chain_path,
    digest,
    head_path,
    key_id,
    seal,
)
from service.governance.audit_verify import NO_END, Problem, verify, verify_file

__all__ = ["GENESIS", "NO_END", "AuditLog", "Problem", "UtcClock", "read_key_file", "redact", "verify", "verify_file"]

log = logging.getLogger(__name__)
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
_MANIFEST_LOCK = threading.Lock()  # lockf locks the file against other processes, not against this one's threads
_TAIL_BYTES = 64 * 1024


class UtcClock:
    """The time now as ``2025-01-31T12:00:00.123Z`` (UTC, milliseconds), formatting each second once.

    The same text as ``datetime.now(UTC).isoformat(timespec="milliseconds")`` with ``Z`` for ``+00:00``, in about a
    sixth of the time. Thread-safe: the cached second and its text are replaced together, as one tuple.
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        second, millis = divmod(time.time_ns() // 1_000_000, 1000)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return text + _MILLIS[millis]


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


class AuditLog:
    """One writer's hash chain, appended to ``<directory>/audit-<writer_id>.jsonl``, its sealed head rewritten
    after every record and its start and end on the directory's manifest. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        key: bytes | None = None,
        stdout: TextIO | None = None,
        writer_id: str | None = None,
    ) -> None:
        if key is not None and not key:
            raise ValueError("the audit HMAC key is empty")
        self.writer_id = sanitise_writer_id(writer_id) if writer_id is not None else default_writer_id()
        self.directory = Path(directory)
        self.path = chain_path(self.directory, self.writer_id)
        self._key = key
        self._stdout = stdout
        self._lock = threading.Lock()
        self._seq = 0
        self._prev = GENESIS
        self._pid = os.getpid()
        self._broken: str | None = None
        self._now = UtcClock()
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        # O_EXCL: a second chain appended to an existing file would make the file fail verification.
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o640)
        self._head: int | None = None
        alg = "sha256" if key is None else "hmac-sha256"
        try:
            self._head = os.open(
                head_path(self.directory, self.writer_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640
            )
            start = self.write(
                {"event": START, "hash_alg": alg, "format": FORMAT, "host": socket.gethostname(), "pid": self._pid}
            )
            entry = {"event": WRITER_START, "chain_writer": self.writer_id, "file": self.path.name}
            append_manifest(self.directory, {**entry, "start_hash": start["hash"]}, key)
        except BaseException:
            self._close_files()
            raise

    def write(self, record: dict[str, Any], *, echo: bool = True) -> dict[str, Any]:
        """Append ``record`` (plus ``writer``, ``seq``, ``prev``, ``hash``; ``time`` if missing); return it.

        ``echo=False`` keeps the record off the stdout copy (it is still chained in the file).
        """
        full = dict(record)
        full.pop("hash", None)
        if "time" not in full:
            full["time"] = self._now()
        with self._lock:
            return self._append(full, echo)

    def _append(self, full: dict[str, Any], echo: bool = True) -> dict[str, Any]:
        """Chain and write one record, then its sealed head; the caller holds the lock."""
        if self._fd is None:
            raise ValueError(f"audit log {self.path} is closed")
        if self._broken is not None:
            raise OSError(self._broken)
        if os.getpid() != self._pid:
            raise RuntimeError("AuditLog used in a forked child: create a new AuditLog in each process")
        seq = self._seq
        full["writer"], full["seq"], full["prev"] = self.writer_id, seq, self._prev
        text, data = canonical(full)
        hashed = digest(data, self._key)
        line = data[:-1] + b',"hash":"' + hashed.encode() + b'"}\n'
        written = os.write(self._fd, line)  # one unbuffered write: in the kernel once it returns
        if written != len(line):
            self._broken = f"{self.path}: short write ({written} of {len(line)} bytes); the chain is broken"
            raise OSError(self._broken)
        self._seq += 1
        self._prev = full["hash"] = hashed
        if self._stdout is not None and echo:
            self._stdout.write(text[:-1] + ',"hash":"' + hashed + '"}\n')
            self._stdout.flush()
        if self._head is not None:  # after the record: a head never names a record the file lacks
            try:
                os.pwrite(self._head, seal(self.writer_id, seq, hashed, self._key), 0)
            except OSError as error:
                raise OSError(f"{self.path}: record {seq} written, but its sealed head was not: {error}") from error
        return full

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
        entry = {"event": WRITER_END, "chain_writer": self.writer_id, "head_seq": end["seq"], "head_hash": end["hash"]}
        try:
            append_manifest(self.directory, entry, self._key)
        except OSError as error:  # the chain itself is closed and whole; verify will miss the manifest's end
            log.error("audit manifest %s: could not record the end of %s: %s", MANIFEST, self.path.name, error)

    def _close_files(self) -> None:
        for fd in (self._fd, self._head):
            if fd is not None:
                os.close(fd)
        self._fd = self._head = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def append_manifest(directory: Path, record: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """Chain ``record`` onto ``directory``'s manifest (created with its ``chain.start`` if missing) and reseal its
    head, under an exclusive lock shared by every process that writes there; return the record."""
    path = directory / MANIFEST
    with _MANIFEST_LOCK:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            seq, prev, prefix = _manifest_tail(fd)
            now = UtcClock()()
            lines, full = [], dict(record)
            if seq < 0:  # a new manifest, or one whose last line is unreadable: (re)start its chain, visibly
                first: dict[str, Any] = {"event": START, "format": FORMAT, "time": now}
                if prev is None:
                    first["restarted"] = True  # the verifier reports the break
                first_line, first_hash = _manifest_line(first, 0, GENESIS, key)
                lines.append(first_line)
                seq, prev = 0, first_hash
            full.setdefault("time", now)
            assert prev is not None  # (a readable tail always has a hash)
            line, full["hash"] = _manifest_line(full, seq + 1, prev, key)
            lines.append(line)
            os.write(fd, prefix + b"".join(lines))
            head = os.open(head_path(directory, MANIFEST_WRITER), os.O_WRONLY | os.O_CREAT, 0o640)
            try:
                os.pwrite(head, seal(MANIFEST_WRITER, seq + 1, full["hash"], key), 0)
            finally:
                os.close(head)
        finally:
            os.close(fd)  # releases the lock
    return full


def _manifest_line(record: dict[str, Any], seq: int, prev: str, key: bytes | None) -> tuple[bytes, str]:
    """``record`` chained as the manifest's ``seq``: its line and hash (the record gains the chain fields)."""
    record.update(writer=MANIFEST_WRITER, seq=seq, prev=prev, kid=key_id(key))
    _, data = canonical(record)
    hashed = digest(data, key)
    return data[:-1] + b',"hash":"' + hashed.encode() + b'"}\n', hashed


def _manifest_tail(fd: int) -> tuple[int, str | None, bytes]:
    """The manifest's last ``seq`` and ``hash`` (-1 and ``GENESIS`` if it is empty; -1 and ``None`` if its last
    line is unreadable), and what to write before the next line (a newline a torn last line lacks)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return -1, GENESIS, b""
    tail = os.pread(fd, min(size, _TAIL_BYTES), max(0, size - _TAIL_BYTES))
    prefix = b"" if tail.endswith(b"\n") else b"\n"
    try:
        last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        seq, hashed = last["seq"], last["hash"]
    except (ValueError, KeyError, TypeError):
        return -1, None, prefix
    if prefix or not isinstance(seq, int) or not isinstance(hashed, str):
        return -1, None, prefix
    return seq, hashed, prefix


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
