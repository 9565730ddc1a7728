"""The audit log's format on disk, shared by the writer (``audit.py``) and the verifier (``audit_verify.py``).

An audit directory holds, per writer process, its hash chain and that chain's
sealed head, and one manifest for all of them:

* ``audit-<writer>.jsonl``: the chain. Every record carries ``writer``, ``seq``
  (0, 1, 2, …), ``prev`` (the previous record's ``hash``, 64 zeros for the
  first) and ``hash``: hex SHA-256, or HMAC-SHA-256 with the audit key, over
  the record's canonical JSON without ``hash``. It opens with ``chain.start``
  and closes with ``chain.end``.
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
  ``audit.manifest.head``.

Format versions: ``chain.start`` of this format has ``"format": 2``. Format 1
(no ``format`` field) had the same records without heads or a manifest, and
verifies as before, with a note that a deleted file or a truncated open chain
cannot be detected in it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
START, END = "chain.start", "chain.end"
WRITER_START, WRITER_END = "writer.start", "writer.end"
CHAIN_FIELDS = ("writer", "seq", "prev", "hash")
FORMAT = 2
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
    return directory / f"audit-{writer}.jsonl"


def head_path(directory: Path, writer: str) -> Path:
    """The sealed head of ``writer``'s chain (``MANIFEST_WRITER``: the manifest's)."""
    return directory / (f"{MANIFEST}.head" if writer == MANIFEST_WRITER else f"audit-{writer}.head")


def writer_of(path: Path) -> str | None:
    """The writer id a chain file's name gives (``audit-<writer>.jsonl``), if it is named so."""
    name = path.name
    if name.startswith("audit-") and name.endswith(".jsonl") and len(name) > len("audit-.jsonl"):
        return name[len("audit-") : -len(".jsonl")]
    return None


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
