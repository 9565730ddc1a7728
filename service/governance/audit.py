"""The tamper-evident audit log: one hash-chained JSON Lines file per writer process.

Every record carries ``writer``, ``seq`` (0, 1, 2, …), ``prev`` (the previous
record's ``hash``, 64 zeros for the first) and ``hash``: hex SHA-256, or
HMAC-SHA-256 when a key is given, over the record's canonical JSON without
``hash``. A chain opens with ``chain.start`` (written by ``AuditLog()``) and
closes with ``chain.end`` (written by ``close()``). Each record is one line
written by one ``os.write``: once ``write`` returns, the line is in the kernel
and survives the process being killed. ``verify`` checks files independently
and reports edited, reordered, deleted and truncated records.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

GENESIS = "0" * 64
START, END = "chain.start", "chain.end"
CHAIN_FIELDS = ("writer", "seq", "prev", "hash")
NO_END = "the chain has no chain.end record (file truncated, or its writer is still running or crashed)"


# The canonical form: sorted keys, no spaces, no NaN; built once (``json.dumps`` makes an encoder per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_CANONICAL_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None without CPython's C accelerator
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _encode_canonical(record: dict[str, Any]) -> str:
    """``_CANONICAL.encode(record)``, without the set-up ``JSONEncoder`` redoes in Python on every call.

    The C encoder is made as ``JSONEncoder.iterencode`` makes it (a fresh circular-reference memo each time).
    """
    if _C_MAKE_ENCODER is None:
        return _CANONICAL.encode(record)
    encoder = _C_MAKE_ENCODER(
        {}, _CANONICAL.default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    return "".join(encoder(record, 0))


def _canonical(record: dict[str, Any]) -> tuple[str, bytes]:
    """The canonical JSON text and its UTF-8 bytes (ASCII escapes if the text holds lone surrogates)."""
    text = _encode_canonical(record)
    try:
        return text, text.encode()
    except UnicodeEncodeError:
        text = _CANONICAL_ASCII.encode(record)
        return text, text.encode()


def _digest(data: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(key, data, "sha256").hex()


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
    """One writer's hash chain, appended to ``<directory>/audit-<writer_id>.jsonl``. Thread-safe."""

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
        self.path = self.directory / f"audit-{self.writer_id}.jsonl"
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
        alg = "sha256" if key is None else "hmac-sha256"
        try:
            self.write({"event": START, "hash_alg": alg, "host": socket.gethostname(), "pid": self._pid})
        except BaseException:
            os.close(self._fd)
            self._fd = None
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
        """Chain and write one record; the caller holds the lock."""
        if self._fd is None:
            raise ValueError(f"audit log {self.path} is closed")
        if self._broken is not None:
            raise OSError(self._broken)
        if os.getpid() != self._pid:
            raise RuntimeError("AuditLog used in a forked child: create a new AuditLog in each process")
        full["writer"], full["seq"], full["prev"] = self.writer_id, self._seq, self._prev
        text, data = _canonical(full)
        digest = _digest(data, self._key)
        line = data[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
        written = os.write(self._fd, line)  # one unbuffered write: in the kernel once it returns
        if written != len(line):
            self._broken = f"{self.path}: short write ({written} of {len(line)} bytes); the chain is broken"
            raise OSError(self._broken)
        self._seq += 1
        self._prev = full["hash"] = digest
        if self._stdout is not None and echo:
            self._stdout.write(text[:-1] + ',"hash":"' + digest + '"}\n')
            self._stdout.flush()
        return full

    def close(self) -> None:
        """Write ``chain.end``, flush it to disk and close the file. Idempotent."""
        with self._lock:
            if self._fd is None:
                return
            try:
                if os.getpid() == self._pid and self._broken is None:
                    self._append({"event": END, "time": self._now()})
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class Problem:
    """One verification finding; ``line`` 0 means the file as a whole."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class _Chain:
    """Checks one file's records, line by line."""

    def __init__(self, path: str, key: bytes | None) -> None:
        self.path, self.key = path, key
        self.problems: list[Problem] = []
        self.hash_failures: list[Problem] = []
        self.records = 0
        self.writer: str | None = None
        self.alg: object = None
        self.seq: int | None = -1  # None: unknown after an unreadable line
        self.prev: str | None = GENESIS
        self.ended = False

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def feed(self, line: int, raw: bytes) -> None:
        if not raw.endswith(b"\n"):
            self.problem(line, "the last line is incomplete (no newline): the file was truncated mid-record")
            return
        record = self._parse(line, raw)
        if record is None:
            self.seq = self.prev = None
            return
        self.records += 1
        if self.ended:
            self.problem(line, "record after chain.end (appended after the chain was closed)")
        self._check_hash(line, raw, record)
        self._check_order(line, record)
        self._check_identity(line, record)
        self.ended = self.ended or record.get("event") == END

    def _parse(self, line: int, raw: bytes) -> dict[str, Any] | None:
        try:
            record = json.loads(raw)
        except ValueError as error:
            self.problem(line, f"not valid JSON ({error})")
            return None
        if not isinstance(record, dict):
            self.problem(line, "not a JSON object")
            return None
        missing = [f for f in CHAIN_FIELDS if f not in record]
        if missing:
            self.problem(line, f"record lacks the chain field(s) {', '.join(missing)}")
            return None
        return record

    def _check_hash(self, line: int, raw: bytes, record: dict[str, Any]) -> None:
        stored = record["hash"]
        try:
            _, data = _canonical({k: v for k, v in record.items() if k != "hash"})
        except ValueError:
            self.problem(line, "record holds a value JSON does not allow (NaN or Infinity)")
            return
        if not isinstance(stored, str) or not hmac.compare_digest(_digest(data, self.key).encode(), stored.encode()):
            self.hash_failures.append(Problem(self.path, line, "record hash does not match its content (edited?)"))
        elif raw != data[:-1] + b',"hash":"' + stored.encode() + b'"}\n':
            self.problem(line, "record is not in canonical form (hand-edited, e.g. a duplicate key?)")

    def _check_order(self, line: int, record: dict[str, Any]) -> None:
        seq, prev = record["seq"], record["prev"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.problem(line, f"seq {seq!r} is not an integer")
        elif self.seq is not None and seq != self.seq + 1:
            if self.seq == -1:
                self.problem(line, f"the first record has seq {seq}, not 0 (records missing from the start)")
            else:
                self.problem(line, f"seq {seq} follows {self.seq} (record deleted or reordered)")
        elif self.prev is not None and prev != self.prev:
            self.problem(line, "prev is not the hash of the record before it (record deleted, inserted or replaced)")
        self.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        self.prev = record["hash"]

    def _check_identity(self, line: int, record: dict[str, Any]) -> None:
        event = record.get("event")
        if self.records == 1:
            self.writer, self.alg = record["writer"], record.get("hash_alg")
            if event != START:
                self.problem(line, f"the first record is {event!r}, not chain.start (start of the chain missing)")
        elif event == START:
            self.problem(line, "a second chain.start (two chains in one file?)")
        if record["writer"] != self.writer:
            self.problem(line, f"writer {record['writer']!r} differs from the file's writer {self.writer!r}")

    def finish(self, allow_open: bool) -> list[Problem]:
        failures = self.hash_failures
        if self.records > 1 and len(failures) == self.records:
            hint = (
                "the chain may have been written with an HMAC key (give it to verify)"
                if self.key is None
                else "wrong HMAC key, or the chain was written without one"
            )
            message = f"no record's hash matches its content: {hint}; chain.start declares hash_alg {self.alg!r}"
            failures = [Problem(self.path, 0, message + " (or every record was edited)")]
        problems = sorted(self.problems + failures, key=lambda p: p.line)
        if self.records == 0 and not problems:
            problems.append(Problem(self.path, 0, "the file holds no records (no chain.start)"))
        elif not self.ended and not allow_open:
            problems.append(Problem(self.path, 0, NO_END))
        return problems


def verify_file(path: Path, key: bytes | None = None, allow_open: bool = False) -> tuple[int, list[Problem]]:
    """Check one chain file; return (records read, problems)."""
    chain = _Chain(str(path), key)
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                chain.feed(number, raw)
    except OSError as error:
        return chain.records, [Problem(str(path), 0, f"cannot read the file: {error.strerror or error}")]
    return chain.records, chain.finish(allow_open)


def verify(paths: Iterable[Path], key: bytes | None = None, allow_open: bool = False) -> list[Problem]:
    """Check each file independently; an empty list means every chain is intact."""
    problems: list[Problem] = []
    for path in paths:
        problems.extend(verify_file(Path(path), key, allow_open)[1])
    return problems


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
