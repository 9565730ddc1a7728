"""Verifying audit logs (the format is ``audit_chain.py``): chains, their sealed heads and the manifest.

For each chain file: edited, reordered, inserted, deleted or truncated
records; a missing ``chain.end`` unless open chains are allowed; and (format 2)
its sealed head — the record the head names must be in the file, so records
cut from the end of a chain, even an open one, are found. For each directory
of the files checked: the manifest's own chain and head; every writer on the
manifest must still have its file (a deleted file is found); every chain
checked must be on the manifest; and a chain the manifest saw closed must end
where the manifest says.

Without the HMAC key none of this is authenticated: whoever can write the
files can rewrite a chain, its head and the manifest consistently. The CLI
says so (``UNAUTHENTICATED``); a chain hashed with a key fails without it. No
local check finds a whole directory rolled back to an earlier copy of itself:
ship the records elsewhere (stdout) for that.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.governance.audit_chain import (
    CHAIN_FIELDS,
    END,
    GENESIS,
    MANIFEST,
    MANIFEST_WRITER,
    START,
    WRITER_END,
    WRITER_START,
    Head,
    canonical,
    digest,
    head_path,
    key_id,
    parse_head,
    writer_of,
)

NO_END = "the chain has no chain.end record (file truncated, or its writer is still running or crashed)"


@dataclass(frozen=True)
class Problem:
    """One verification finding; ``line`` 0 means the file as a whole."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


@dataclass
class Report:
    """What verifying one file found."""

    path: str
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    writer: str | None = None  # the chain's writer (from its first record)
    start_hash: str | None = None  # the hash of its chain.start
    format: int = 1
    last: tuple[int, str] | None = None  # the last record's seq and hash
    foreign: bool = False  # no record's hash matched: hashed with another key (or none)


class _Chain:
    """Checks one file's records, line by line."""

    def __init__(self, path: str, key: bytes | None, *, marks: Iterable[int] = (), per_record_kid: bool = False):
        self.path, self.key = path, key
        self.kid, self.per_record_kid = key_id(key), per_record_kid  # the manifest names each record's key
        self.problems: list[Problem] = []
        self.hash_failures: list[Problem] = []
        self.records = self.unverified = 0
        self.own_seen = self.last_own = False  # (the manifest) records hashed with this key: any, the last
        self.first: dict[str, Any] | None = None
        self.alg: object = None
        self.seq: int | None = -1  # None: unknown after an unreadable line
        self.prev: str | None = GENESIS
        self.last: tuple[int, str] | None = None
        self.marks: dict[int, str | None] = dict.fromkeys(marks)  # seq -> hash of its first record with it
        self.ended = False

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def feed(self, line: int, raw: bytes) -> dict[str, Any] | None:
        if not raw.endswith(b"\n"):
            self.problem(line, "the last line is incomplete (no newline): the file was truncated mid-record")
            return None
        record = self._parse(line, raw)
        if record is None:
            self.seq = self.prev = None
            return None
        self.records += 1
        if self.ended:
            self.problem(line, "record after chain.end (appended after the chain was closed)")
        self._check_hash(line, raw, record)
        self._check_order(line, record)
        self._check_identity(line, record)
        self.ended = self.ended or record.get("event") == END
        return record

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
        if self.per_record_kid:
            self.last_own = record.get("kid") == self.kid
            if not self.last_own:
                if self.own_seen and self.key is not None:  # after keyed records: someone without the key?
                    self.problem(line, "record hashed with another key (or none) after records hashed with this one")
                self.unverified += 1  # only its place in the chain is checked
                return
            self.own_seen = True
        stored = record["hash"]
        try:
            _, data = canonical({k: v for k, v in record.items() if k != "hash"})
        except ValueError:
            self.problem(line, "record holds a value JSON does not allow (NaN or Infinity)")
            return
        if not isinstance(stored, str) or not hmac.compare_digest(digest(data, self.key).encode(), stored.encode()):
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
        if self.seq is not None and isinstance(self.prev, str):
            self.last = (self.seq, self.prev)
            if self.marks.get(self.seq, "") is None:
                self.marks[self.seq] = self.prev

    def _check_identity(self, line: int, record: dict[str, Any]) -> None:
        event = record.get("event")
        if self.records == 1:
            self.first, self.alg = record, record.get("hash_alg")
            if event != START:
                self.problem(line, f"the first record is {event!r}, not chain.start (start of the chain missing)")
        elif event == START:
            self.problem(line, "a second chain.start (two chains in one file?)")
        writer = self.first["writer"] if self.first else None
        if record["writer"] != writer:
            self.problem(line, f"writer {record['writer']!r} differs from the file's writer {writer!r}")

    def finish(self, allow_open: bool) -> Report:
        failures, foreign = self.hash_failures, False
        if not self.per_record_kid and self.records > 1 and len(failures) == self.records:
            hint = (
                "the chain may have been written with an HMAC key (give it to verify)"
                if self.key is None
                else "wrong HMAC key, or the chain was written without one"
            )
            message = f"no record's hash matches its content: {hint}; chain.start declares hash_alg {self.alg!r}"
            failures, foreign = [Problem(self.path, 0, message + " (or every record was edited)")], True
        problems = sorted(self.problems + failures, key=lambda p: p.line)
        if self.records == 0 and not problems:
            problems.append(Problem(self.path, 0, "the file holds no records (no chain.start)"))
        elif not self.ended and not allow_open:
            problems.append(Problem(self.path, 0, NO_END))
        first = self.first or {}
        start = first.get("event") == START
        version = first.get("format") if start else None
        return Report(
            self.path,
            self.records,
            problems,
            writer=first.get("writer") if isinstance(first.get("writer"), str) else None,
            start_hash=first.get("hash") if start else None,
            format=version if isinstance(version, int) and not isinstance(version, bool) else 1,
            last=self.last,
            foreign=foreign,
        )


def _read_head(path: Path) -> Head | str | None:
    """The sealed head at ``path``; ``None`` if there is none; the reason as text if it is unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    try:
        return parse_head(raw)
    except ValueError as error:
        return str(error)


def _head_problems(
    report: Report, chain: _Chain, head: Head | str | None, name: str, where: Path, key: bytes | None
) -> list[Problem]:
    """What the chain's sealed head (read before the chain) says of the chain as read."""
    path = report.path

    def problem(message: str) -> list[Problem]:
        return [Problem(path, 0, message)]

    if head is None:
        return problem(f"its sealed head {where.name} is missing (deleted?): records cut from its end would go unseen")
    if isinstance(head, str):
        return problem(f"its sealed head {where.name} is unreadable ({head})")
    if report.foreign:
        return []  # the chain is not hashed with this key: its own problem says so
    if head.kid != key_id(key) or not head.sealed_by(name, key):
        return problem(f"its sealed head {where.name} does not carry a valid seal for this chain (forged or replaced?)")
    if report.last is None or report.last[0] < head.seq:
        ends = "holds no record" if report.last is None else f"ends at seq {report.last[0]}"
        return problem(f"the file {ends}, but its sealed head is seq {head.seq}: records were cut from its end")
    if chain.marks.get(head.seq) != head.hash:
        return problem(f"record seq {head.seq} is not the one its sealed head names (replaced or re-hashed)")
    return []


def _first_writer(path: Path) -> str | None:
    try:
        with open(path, "rb") as file:
            first = json.loads(file.readline())
    except (OSError, ValueError):
        return None
    writer = first.get("writer") if isinstance(first, dict) else None
    return writer if isinstance(writer, str) else None


def check_file(path: Path, key: bytes | None = None, allow_open: bool = False) -> Report:
    """Check one chain file and (format 2) its sealed head, read before the file so a live writer never trips it."""
    path = Path(path)
    writer = writer_of(path) or _first_writer(path)
    where = head_path(path.parent, writer) if writer else None
    head = _read_head(where) if where else None
    chain = _Chain(str(path), key, marks=[head.seq] if isinstance(head, Head) else [])
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                chain.feed(number, raw)
    except OSError as error:
        return Report(
            str(path), chain.records, [Problem(str(path), 0, f"cannot read the file: {error.strerror or error}")]
        )
    report = chain.finish(allow_open)
    if report.format >= 2 and where is not None:
        report.problems += _head_problems(report, chain, head, writer or "", where, key)
    elif report.records:
        report.notes.append("format 1 (no sealed head): records cut from the end of an open chain cannot be detected")
    return report


def verify_file(path: Path, key: bytes | None = None, allow_open: bool = False) -> tuple[int, list[Problem]]:
    """Check one chain file and its sealed head; return (records read, problems)."""
    report = check_file(path, key, allow_open)
    return report.records, report.problems


@dataclass
class _Entries:
    """What the manifest says: each writer's file, its chain.start hash and, once closed, its last record."""

    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # writer -> (file name, line)
    starts: dict[tuple[str, str], object] = field(default_factory=dict)  # (writer, its chain.start's hash) -> kid
    ends: dict[str, tuple[int, str]] = field(default_factory=dict)  # writer -> (seq, hash) of its chain.end

    def add(self, line: int, record: dict[str, Any]) -> None:
        writer, event = record.get("chain_writer"), record.get("event")
        if not isinstance(writer, str):
            return
        if event == WRITER_START and isinstance(record.get("file"), str):
            self.files[writer] = (str(record["file"]), line)
            self.starts[(writer, str(record.get("start_hash")))] = record.get("kid")
        elif event == WRITER_END and isinstance(record.get("head_seq"), int):
            self.ends[writer] = (int(record["head_seq"]), str(record.get("head_hash")))


def check_manifest(directory: Path, key: bytes | None, reports: list[Report]) -> Report | None:
    """Check ``directory``'s manifest and the chains of it that were checked (``reports``); ``None`` if there is
    nothing to say (no manifest, and no chain that needs one)."""
    path = directory / MANIFEST
    where = head_path(directory, MANIFEST_WRITER)
    head = _read_head(where)  # before the manifest, as for a chain
    if not path.exists():
        if any(r.format >= 2 for r in reports):
            return Report(str(path), problems=[Problem(str(path), 0, "the manifest is missing (deleted?)")])
        if reports:
            return Report(str(path), notes=["no manifest (format 1 files): a deleted writer file cannot be detected"])
        return None
    chain = _Chain(str(path), key, marks=[head.seq] if isinstance(head, Head) else [], per_record_kid=True)
    entries = _Entries()
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                record = chain.feed(number, raw)
                if record is not None:
                    entries.add(number, record)
    except OSError as error:
        return Report(str(path), problems=[Problem(str(path), 0, f"cannot read the file: {error.strerror or error}")])
    report = chain.finish(allow_open=True)  # a manifest never ends
    if chain.last_own:  # its head is sealed with the key of its last record: this one
        report.problems += _head_problems(report, chain, head, MANIFEST_WRITER, where, key)
    else:
        report.notes.append("its last record and head are hashed with another key (or none): the head is not checked")
    for _writer, (name, line) in sorted(entries.files.items()):
        if not (directory / name).exists():
            report.problems.append(Problem(str(path), line, f"{name} is on the manifest but missing (deleted?)"))
    for checked in reports:
        _check_listed(checked, entries, key_id(key))
    if chain.unverified:
        report.notes.append(
            f"{chain.unverified} record(s) hashed with another key (or none): not checked with this one"
        )
    return report


def _check_listed(report: Report, entries: _Entries, kid: str) -> None:
    """A checked chain against the manifest: listed (by a record hashed with the chain's own key), and ended
    where the manifest saw it end."""
    if report.format < 2 or report.writer is None or report.foreign:
        return
    if entries.starts.get((report.writer, report.start_hash or "")) != kid:
        report.problems.append(Problem(report.path, 0, f"its chain is not on the {MANIFEST} (copied in or forged?)"))
        return
    end = entries.ends.get(report.writer)
    if end is None or report.last == end:
        return
    if report.last is None or report.last[0] < end[0]:
        ends = "holds no record" if report.last is None else f"ends at seq {report.last[0]}"
        message = f"the manifest saw this chain close at seq {end[0]}, but the file {ends}: truncated"
    else:
        message = f"its last record is not the chain.end (seq {end[0]}) the manifest saw (replaced or appended to?)"
    report.problems.append(Problem(report.path, 0, message))


def verify_paths(paths: Iterable[Path], key: bytes | None = None, allow_open: bool = False) -> list[Report]:
    """Check chain files and directories (every ``audit-*.jsonl`` in them), then the manifest of each directory."""
    files: dict[Path, Path] = {}  # resolved -> as given
    directories: dict[Path, list[Report]] = {}
    empty: list[Report] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(given.glob("audit-*.jsonl"))
            if not found and not (given / MANIFEST).exists():
                empty.append(Report(str(given), problems=[Problem(str(given), 0, "no audit files here")]))
            directories.setdefault(given.resolve(), [])
            files.update({f.resolve(): f for f in found})
        else:
            files[given.resolve()] = given
            directories.setdefault(given.resolve().parent, [])
    reports = []
    for resolved, given in files.items():
        report = check_file(given, key, allow_open)
        directories.setdefault(resolved.parent, []).append(report)
        reports.append(report)
    for directory, checked in directories.items():
        manifest = check_manifest(directory, key, checked)
        if manifest is not None:
            reports.append(manifest)
    return empty + reports


def verify(paths: Iterable[Path], key: bytes | None = None, allow_open: bool = False) -> list[Problem]:
    """Check files (and their directories' manifests); an empty list means every chain is intact."""
    return [problem for report in verify_paths(paths, key, allow_open) for problem in report.problems]
