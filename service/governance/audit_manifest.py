"""Appending to an audit directory's manifest (the format is ``audit_chain.py``), shared by every writer there.

Every process that writes the directory appends under one exclusive file lock
(``lockf`` on the manifest), so the manifest stays one chain however many
ingress processes share the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from service.governance.audit_chain import (
    FORMAT,
    GENESIS,
    MANIFEST,
    MANIFEST_WRITER,
    START,
    UtcClock,
    canonical,
    digest,
    head_path,
    key_id,
    seal,
)

_MANIFEST_LOCK = threading.Lock()  # lockf locks the file against other processes, not against this one's threads
TAIL_BYTES = 64 * 1024


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


def last_line(fd: int) -> tuple[bytes, bool] | None:
    """The last line of the file open at ``fd`` (within its last ``TAIL_BYTES``) and whether it is complete
    (ends with a newline); ``None`` for an empty file."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    tail = os.pread(fd, min(size, TAIL_BYTES), max(0, size - TAIL_BYTES))
    complete = tail.endswith(b"\n")
    return tail.rstrip(b"\n").rsplit(b"\n", 1)[-1], complete


def _manifest_tail(fd: int) -> tuple[int, str | None, bytes]:
    """The manifest's last ``seq`` and ``hash`` (-1 and ``GENESIS`` if it is empty; -1 and ``None`` if its last
    line is unreadable), and what to write before the next line (a newline a torn last line lacks)."""
    tail = last_line(fd)
    if tail is None:
        return -1, GENESIS, b""
    line, complete = tail
    prefix = b"" if complete else b"\n"
    try:
        last = json.loads(line)
        seq, hashed = last["seq"], last["hash"]
    except (ValueError, KeyError, TypeError):
        return -1, None, prefix
    if prefix or not isinstance(seq, int) or not isinstance(hashed, str):
        return -1, None, prefix
    return seq, hashed, prefix
