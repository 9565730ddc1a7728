"""The audit log's format on disk, shared by the writer (``audit.py``) and the verifier (``audit_verify.py``).

An audit directory holds, per writer process, its hash chain and that chain's
sealed head, and one manifest for all of them:

* ``audit-<writer>+<segment>.jsonl`` (format 3; ``audit-<writer>.jsonl`` in
  format 2): the chain, in segments ``000000``, ``000001``, … Every record
  carries ``writer``, ``seq`` (0, 1, 2, … across the segments), ``prev`` (the
  previous record's ``hash``, 64 zeros for the first) and ``hash``: hex
  SHA-256, or HMAC-SHA-256 with the audit key, over the record's canonical
  JSON without ``hash``. The chain opens with ``chain.start`` and closes with
  ``chain.end``. When a segment is rotated (by size or time) it ends with
  ``segment.end`` and the next one opens with ``segment.start``, its *anchor*:
  the next ``seq``, with ``prev`` the hash of that ``segment.end``, so the
  chain runs on across files and a segment pruned by retention leaves the
  rest verifiable from their anchor.
* A record written after records kept off the stdout copy carries
  ``not_echoed``: how many records right before it are in the file but not on
  stdout, so that records collected from stdout verify too (``audit_shipped.py``).
* ``audit-<writer>.head``: the chain's *sealed head*, rewritten in place after
  every record: the last record's ``seq`` and ``hash`` and a ``mac`` over them
  and the writer id (with the key when there is one). A tail cut from an open
  chain no longer reaches its head.
* ``audit.manifest``: a chain of its own (writer ``manifest``), appended under a
  file lock by every writer: ``writer.start`` (the writer, its file and the hash
  of its ``chain.start``) when a writer opens, ``writer.end`` (its last ``seq``
  and ``hash``) when it closes. A writer's file that is deleted is still named
  here. Each manifest record names the key it was hashed with (``kid``), so
  writers with different keys can share a directory. Its head is
  ``audit.manifest.head``. Format 3 adds ``writer.segment`` (a new segment's
  file and the hash of its anchor) at each rotation, and ``writer.pruned``
  (the segment's file and its last ``seq`` and ``hash``) before retention
  deletes a segment.

Format versions: ``chain.start`` of this format has ``"format": 3`` (and
``"segment": 0``). Format 2 (one file per writer, no segments) and format 1
(no ``format`` field: no heads, no manifest) verify as before; format 1 with a
note that a deleted file or a truncated open chain cannot be detected in it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
START, END = "chain.start", "chain.end"
SEGMENT_START, SEGMENT_END = "segment.start", "segment.end"
WRITER_START, WRITER_END = "writer.start", "writer.end"
WRITER_SEGMENT, WRITER_PRUNED = "writer.segment", "writer.pruned"
CHAIN_FIELDS = ("writer", "seq", "prev", "hash")
NOT_ECHOED = "not_echoed"  # on a record: how many records right before it were kept off stdout
FORMAT = 3
MANIFEST = "audit.manifest"
MANIFEST_WRITER = "manifest"  # the ``writer`` of the manifest's own records
HEAD_SIZE = 256  # a head is one space-padded line of this many bytes, rewritten in place
_HEAD_CONTEXT = b"paddock-audit-head\x00"
_KEY_ID_CONTEXT = b"paddock-audit-key-id"

# The canonical form: sorted keys, no spaces, no NaN; built once (``json.dumps`` makes an encoder per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_CANONICAL_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None without CPython's C accelerator


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


def canonical(record: dict[str, Any]) -> tuple[str, bytes]:
    """The canonical JSON text and its UTF-8 bytes (ASCII escapes if the text holds lone surrogates)."""
    text = _encode_canonical(record)
    try:
        return text, text.encode()
    except UnicodeEncodeError:
        text = _CANONICAL_ASCII.encode(record)
        return text, text.encode()


def digest(data: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(key, data, "sha256").hex()


def key_id(key: bytes | None) -> str:
    """Which key hashed a record: ``sha256`` (none), or ``hmac-sha256:`` and a tag derived from the key."""
    if key is None:
        return "sha256"
    return "hmac-sha256:" + hmac.digest(key, _KEY_ID_CONTEXT, "sha256").hex()[:16]


def chain_path(directory: Path, writer: str) -> Path:
    """A format 2 chain file (one per writer, no segments)."""
    return directory / f"audit-{writer}.jsonl"


def segment_path(directory: Path, writer: str, segment: int) -> Path:
    """Segment ``segment`` of ``writer``'s chain (format 3). ``+`` is not in a writer id: the name parses back."""
    return directory / f"audit-{writer}+{segment:06d}.jsonl"


_CHAIN_NAME = re.compile(r"audit-([A-Za-z0-9._-]+?)(?:\+([0-9]{6,}))?\.jsonl")


def parse_chain_name(name: str) -> tuple[str, int | None] | None:
    """``(writer, segment)`` of a chain file's name (segment ``None``: a format 2 file), or ``None``."""
    match = _CHAIN_NAME.fullmatch(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)) if match.group(2) is not None else None


def head_path(directory: Path, writer: str) -> Path:
    """The sealed head of ``writer``'s chain (``MANIFEST_WRITER``: the manifest's)."""
    return directory / (f"{MANIFEST}.head" if writer == MANIFEST_WRITER else f"audit-{writer}.head")


def writer_of(path: Path) -> str | None:
    """The writer id a chain file's name gives (``audit-<writer>[+<segment>].jsonl``), if it is named so."""
    parsed = parse_chain_name(path.name)
    return parsed[0] if parsed else None


def _mac(writer: str, seq: int, last: str, key: bytes | None) -> str:
    return digest(_HEAD_CONTEXT + f"{writer}\x00{seq}\x00{last}".encode(), key)


def seal(writer: str, seq: int, last: str, key: bytes | None) -> bytes:
    """The head line of ``writer``'s chain whose last record is ``seq`` with hash ``last`` (``HEAD_SIZE`` bytes)."""
    body = json.dumps(
        {"format": FORMAT, "seq": seq, "hash": last, "kid": key_id(key), "mac": _mac(writer, seq, last, key)},
        separators=(",", ":"),
    ).encode()
    if len(body) >= HEAD_SIZE:
        raise ValueError("audit head too long")  # cannot happen: its fields have fixed sizes
    return body + b" " * (HEAD_SIZE - 1 - len(body)) + b"\n"


@dataclass(frozen=True)
class Head:
    """A sealed head as read back: the last record it names, the key tag and the seal."""

    seq: int
    hash: str
    kid: str
    mac: str

    def sealed_by(self, writer: str, key: bytes | None) -> bool:
        return hmac.compare_digest(_mac(writer, self.seq, self.hash, key).encode(), self.mac.encode())


def parse_head(raw: bytes) -> Head:
    """A head file's content (``ValueError`` if it is not one)."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    seq, last, kid, mac = data.get("seq"), data.get("hash"), data.get("kid"), data.get("mac")
    if not isinstance(seq, int) or isinstance(seq, bool) or not all(isinstance(v, str) for v in (last, kid, mac)):
        raise ValueError("not an audit head")
    return Head(seq, str(last), str(kid), str(mac))


class UtcClock:
    """The time now as ``2025-01-31T12:00:00.123Z`` (UTC, milliseconds), formatting each second once.

    The same text as ``datetime.now(UTC).isoformat(timespec="milliseconds")`` with ``Z`` for ``+00:00``, in about a
    sixth of the time. Thread-safe: the cached second and its text are replaced together, as one tuple.
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        return self.at_ns(time.time_ns())

    def at_ns(self, ns: int) -> str:
        """The text of ``ns`` nanoseconds since the epoch."""
        second, millis = divmod(ns // 1_000_000, 1000)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return text + _MILLIS[millis]
