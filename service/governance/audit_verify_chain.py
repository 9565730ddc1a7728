"""Verifying audit chains (the format is ``audit_chain.py``): each chain across its segments, and its head.

For each chain: edited, reordered, inserted, deleted or truncated records; a
missing ``chain.end`` unless open chains are allowed; and (format 2 and 3) its
sealed head — the record the head names must be in the chain's last segment,
so records cut from the end of a chain, even an open one, are found. A
writer's segments (format 3) are checked as one chain: each segment's anchor
must follow the previous segment's ``segment.end``, so a segment deleted from
the middle, truncated or put out of order breaks it. A chain whose first
segments were pruned is checked from the first remaining segment's anchor.
For each directory of the files checked the manifest is checked too
(``audit_verify_manifest.py``): a file deleted rather than pruned, a chain or
segment not on it, a closed chain cut short.

Without the HMAC key none of this is authenticated: whoever can write the
files can rewrite a chain, its head and the manifest consistently. The CLI
says so (``UNAUTHENTICATED``); a chain hashed with a key fails without it. No
local check finds a whole directory rolled back to an earlier copy of itself:
ship the records elsewhere (stdout, ``audit_shipped.py``) for that.
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
    SEGMENT_END,
    SEGMENT_START,
    START,
    Head,
    canonical,
    digest,
    head_path,
    key_id,
    parse_chain_name,
    parse_head,
    segment_path,
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
    start_hash: str | None = None  # the hash of its first record, when that is its chain.start or segment.start
    format: int = 1
    last: tuple[int, str] | None = None  # the last record's seq and hash
    foreign: bool = False  # no record's hash matched: hashed with another key (or none)
    segment: int | None = None  # its segment number (format 3: from the file's name and its first record)
    anchor: tuple[int, str] | None = None  # checked from its segment.start (seq, prev): earlier segments unchecked
    given_from: bool = False  # (with ``anchor``) because earlier segments, still here, were not given
    tail: bool = True  # the last segment of its chain here: its head, chain.end and the manifest's end apply


class Chain:
    """Checks one file's records, line by line; ``carry`` continues a chain from the previous segment's last
    record (seq, hash)."""

    def __init__(
        self,
        path: str,
        key: bytes | None,
        *,
        marks: Iterable[int] = (),
        per_record_kid: bool = False,
        carry: tuple[int, str] | None = None,
        segment: int | None = None,
    ):
        self.path, self.key = path, key
        self.kid, self.per_record_kid = key_id(key), per_record_kid  # the manifest names each record's key
        self.problems: list[Problem] = []
        self.hash_failures: list[Problem] = []
        self.records = self.unverified = 0
        self.own_seen = self.last_own = False  # (the manifest) records hashed with this key: any, the last
        self.first: dict[str, Any] | None = None
        self.alg: object = None
        self.continuing, self.segment = carry is not None, segment
        self.seq: int | None = carry[0] if carry else -1  # None: unknown after an unreadable line
        self.prev: str | None = carry[1] if carry else GENESIS
        self.anchor: tuple[int, str] | None = None
        self.last: tuple[int, str] | None = None
        self.marks: dict[int, str | None] = dict.fromkeys(marks)  # seq -> hash of its first record with it
        self.ended: str | None = None  # chain.end or segment.end, once seen

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
            self.problem(line, f"record after {self.ended} (appended after the chain was closed)")
        self._check_hash(line, raw, record)
        if self.records == 1 and not self.continuing and record.get("event") == SEGMENT_START:
            self._anchor(record)
        self._check_order(line, record)
        self._check_identity(line, record)
        if record.get("event") in (END, SEGMENT_END):
            self.ended = self.ended or str(record["event"])
        return record

    def _anchor(self, record: dict[str, Any]) -> None:
        """The file starts at a segment's anchor with nothing before it to follow: check the chain from there."""
        seq, prev = record["seq"], record["prev"]
        if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(prev, str):
            self.seq, self.prev, self.anchor = seq - 1, prev, (seq, prev)

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
            self._check_first(line, record)
        elif event == START:
            self.problem(line, "a second chain.start (two chains in one file?)")
        elif event == SEGMENT_START:
            self.problem(line, "a segment.start inside a file (two segments in one file?)")
        writer = self.first["writer"] if self.first else None
        if record["writer"] != writer:
            self.problem(line, f"writer {record['writer']!r} differs from the file's writer {writer!r}")

    def _check_first(self, line: int, record: dict[str, Any]) -> None:
        event, named = record.get("event"), self.segment
        if self.continuing and event != SEGMENT_START:
            self.problem(line, f"the first record is {event!r}, not segment.start (start of the segment missing)")
        elif event not in (START, SEGMENT_START):
            self.problem(line, f"the first record is {event!r}, not chain.start (start of the chain missing)")
        if named is not None and event in (START, SEGMENT_START) and record.get("segment", 0) != named:
            self.problem(
                line,
                f"it starts segment {record.get('segment', 0)!r}, but its name says {named} (renamed or reordered?)",
            )

    def finish(self, allow_open: bool, follows: bool = False, later: str | None = None) -> Report:
        """The report; ``follows``: a later segment of the chain is checked next; ``later``: why a missing next
        segment is no problem (it is here but not checked), else ``None``."""
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
        notes: list[str] = []
        if self.records == 0 and not problems:
            problems.append(Problem(self.path, 0, "the file holds no records (no chain.start)"))
        elif self.records:
            self._ending(problems, notes, allow_open, follows, later)
        first = self.first or {}
        start = first.get("event") in (START, SEGMENT_START)
        version = first.get("format") if start else None
        segment = self.segment if self.segment is not None else first.get("segment")
        return Report(
            self.path,
            self.records,
            problems,
            notes,
            writer=first.get("writer") if isinstance(first.get("writer"), str) else None,
            start_hash=first.get("hash") if start else None,
            format=version if isinstance(version, int) and not isinstance(version, bool) else 1,
            last=self.last,
            foreign=foreign,
            segment=segment if isinstance(segment, int) and not isinstance(segment, bool) else None,
            anchor=self.anchor,
        )

    def _ending(
        self, problems: list[Problem], notes: list[str], allow_open: bool, follows: bool, later: str | None
    ) -> None:
        if self.ended == END and follows:
            problems.append(Problem(self.path, 0, "the chain ends here, but a later segment follows"))
        elif self.ended == SEGMENT_END and not follows:
            if later is None:
                problems.append(Problem(self.path, 0, "the segment ends, but its next segment is missing (deleted?)"))
            else:
                notes.append(later)
        elif self.ended is None and follows:
            problems.append(
                Problem(self.path, 0, "the segment has no segment.end, but a later one follows (truncated?)")
            )
        elif self.ended is None and not allow_open:
            problems.append(Problem(self.path, 0, NO_END))


def read_head(path: Path) -> Head | str | None:
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


def head_problems(
    report: Report, chain: Chain, head: Head | str | None, name: str, where: Path, key: bytes | None
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


def _read(chain: Chain, path: Path) -> str | None:
    """Feed the file to ``chain``; the reason if it cannot be read."""
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                chain.feed(number, raw)
    except OSError as error:
        return f"cannot read the file: {error.strerror or error}"
    return None


def _with_head(
    report: Report, chain: Chain, head: Head | str | None, writer: str, where: Path, key: bytes | None
) -> None:
    if report.format >= 2:
        report.problems += head_problems(report, chain, head, writer, where, key)
    elif report.records:
        report.notes.append("format 1 (no sealed head): records cut from the end of an open chain cannot be detected")


def check_alone(path: Path, key: bytes | None, allow_open: bool) -> Report:
    """A file that is not a named segment (format 2, or a copy under another name): its chain on its own."""
    writer = (parse_chain_name(path.name) or (None, None))[0] or _first_writer(path)
    where = head_path(path.parent, writer) if writer else None
    head = read_head(where) if where else None
    chain = Chain(str(path), key, marks=[head.seq] if isinstance(head, Head) else [])
    failure = _read(chain, path)
    if failure is not None:
        return Report(str(path), chain.records, [Problem(str(path), 0, failure)])
    report = chain.finish(allow_open, later="a later segment of this chain is not checked with it")
    if where is not None:
        _with_head(report, chain, head, writer or "", where, key)
    if report.anchor is not None and report.writer is not None and report.segment is not None:
        report.given_from = segment_path(path.parent, report.writer, report.segment - 1).exists()
    return report


def _present(directory: Path, writer: str) -> list[int]:
    """The segment numbers of ``writer``'s chain that are in ``directory``."""
    found = (parse_chain_name(p.name) for p in directory.glob(f"audit-{writer}+*.jsonl"))
    return sorted(parsed[1] for parsed in found if parsed is not None and parsed[0] == writer and parsed[1] is not None)


def check_run(
    directory: Path, writer: str, numbers: list[int], key: bytes | None, allow_open: bool = False
) -> list[Report]:
    """Check segments ``numbers`` of ``writer``'s chain in ``directory`` as one chain, in order. A segment whose
    predecessor is here but not among ``numbers`` restarts the check at its anchor."""
    present = _present(directory, writer)
    where = head_path(directory, writer)
    head = read_head(where)  # before the segments, so a live writer never trips it
    numbers = sorted(set(numbers))
    reports: list[Report] = []
    carry: tuple[int, str] | None = None
    for index, number in enumerate(numbers):
        path = segment_path(directory, writer, number)
        restart = index == 0 or (number - 1 in present and number - 1 != numbers[index - 1])
        follows = index + 1 < len(numbers) and not (
            numbers[index + 1] - 1 in present and numbers[index + 1] - 1 != number
        )
        tail = not any(n > number for n in present)
        marks = [head.seq] if isinstance(head, Head) and tail else []
        chain = Chain(str(path), key, marks=marks, carry=None if restart else carry, segment=number)
        failure = _read(chain, path)
        if failure is not None:
            reports.append(Report(str(path), chain.records, [Problem(str(path), 0, failure)], segment=number))
            carry = None
            continue
        rotated = segment_path(directory, writer, number + 1).exists()  # (also if rotated while checking)
        later = "its next segment is not checked with it" if rotated else None
        report = chain.finish(allow_open, follows=follows, later=later)
        report.tail = tail and not rotated
        report.given_from = report.anchor is not None and number - 1 in present
        if report.tail:
            _with_head(report, chain, head, writer, where, key)
        carry = (chain.seq, chain.prev) if chain.seq is not None and chain.prev is not None else None
        reports.append(report)
    return reports


def check_file(path: Path, key: bytes | None = None, allow_open: bool = False) -> Report:
    """Check one chain file and its sealed head (a named segment: as the only one checked of its chain)."""
    path = Path(path)
    parsed = parse_chain_name(path.name)
    if parsed is not None and parsed[1] is not None:
        return check_run(path.parent, parsed[0], [parsed[1]], key, allow_open)[0]
    return check_alone(path, key, allow_open)
