"""Verifying an audit directory's manifest (``audit_chain.py``), and the chains checked there against it.

The manifest's own chain and head; every file on it must still be there unless
it was pruned (``writer.pruned``); every chain and segment checked must be on
it; a chain checked from an anchor must follow the last record of the segment
pruned before it; and a chain the manifest saw closed must end where the
manifest says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.governance.audit_chain import (
    MANIFEST,
    MANIFEST_WRITER,
    WRITER_END,
    WRITER_PRUNED,
    WRITER_SEGMENT,
    WRITER_START,
    Head,
    head_path,
    key_id,
)
from service.governance.audit_verify_chain import Chain, Problem, Report, head_problems, read_head


@dataclass
class _Entries:
    """What the manifest says: each file of each writer, the hash of each chain's and segment's first record, the
    segments pruned and each closed chain's last record."""

    files: dict[str, int] = field(default_factory=dict)  # file name -> its manifest line
    starts: dict[tuple[str, str], object] = field(default_factory=dict)  # (writer, first record's hash) -> kid
    pruned: dict[tuple[str, int | None], tuple[object, object]] = field(default_factory=dict)  # -> last seq, hash
    pruned_files: set[str] = field(default_factory=set)
    ends: dict[str, tuple[int, str]] = field(default_factory=dict)  # writer -> (seq, hash) of its chain.end

    def add(self, line: int, record: dict[str, Any]) -> None:
        writer, event, name = record.get("chain_writer"), record.get("event"), record.get("file")
        if not isinstance(writer, str):
            return
        if event in (WRITER_START, WRITER_SEGMENT) and isinstance(name, str):
            self.files.setdefault(name, line)
            first = record.get("start_hash" if event == WRITER_START else "anchor_hash")
            self.starts[(writer, str(first))] = record.get("kid")
        elif event == WRITER_PRUNED and isinstance(name, str):
            segment = record.get("segment")
            number = segment if isinstance(segment, int) and not isinstance(segment, bool) else None
            self.pruned[(writer, number)] = (record.get("last_seq"), record.get("last_hash"))
            self.pruned_files.add(name)
        elif event == WRITER_END and isinstance(record.get("head_seq"), int):
            self.ends[writer] = (int(record["head_seq"]), str(record.get("head_hash")))


def _read_manifest(path: Path, chain: Chain, entries: _Entries) -> str | None:
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                record = chain.feed(number, raw)
                if record is not None:
                    entries.add(number, record)
    except OSError as error:
        return f"cannot read the file: {error.strerror or error}"
    return None


def check_manifest(directory: Path, key: bytes | None, reports: list[Report]) -> Report | None:
    """Check ``directory``'s manifest and the chains of it that were checked (``reports``); ``None`` if there is
    nothing to say (no manifest, and no chain that needs one)."""
    path = directory / MANIFEST
    where = head_path(directory, MANIFEST_WRITER)
    head = read_head(where)  # before the manifest, as for a chain
    if not path.exists():
        if any(r.format >= 2 for r in reports):
            return Report(str(path), problems=[Problem(str(path), 0, "the manifest is missing (deleted?)")])
        if reports:
            return Report(str(path), notes=["no manifest (format 1 files): a deleted writer file cannot be detected"])
        return None
    chain = Chain(str(path), key, marks=[head.seq] if isinstance(head, Head) else [], per_record_kid=True)
    entries = _Entries()
    failure = _read_manifest(path, chain, entries)
    if failure is not None:
        return Report(str(path), problems=[Problem(str(path), 0, failure)])
    report = chain.finish(allow_open=True)  # a manifest never ends
    if chain.last_own:  # its head is sealed with the key of its last record: this one
        report.problems += head_problems(report, chain, head, MANIFEST_WRITER, where, key)
    else:
        report.notes.append("its last record and head are hashed with another key (or none): the head is not checked")
    for name, line in sorted(entries.files.items(), key=lambda item: item[1]):
        if name not in entries.pruned_files and not (directory / name).exists():
            report.problems.append(Problem(str(path), line, f"{name} is on the manifest but missing (deleted?)"))
    for checked in reports:
        _check_listed(checked, entries, key_id(key))
    if chain.unverified:
        report.notes.append(
            f"{chain.unverified} record(s) hashed with another key (or none): not checked with this one"
        )
    if entries.pruned_files:
        report.notes.append(f"{len(entries.pruned_files)} segment(s) pruned by retention")
    return report


def _check_listed(report: Report, entries: _Entries, kid: str) -> None:
    """A checked chain file against the manifest: listed (by a record hashed with the chain's own key), after the
    segment pruned before it when checked from its anchor, and (its last segment) ended where the manifest saw it
    end."""
    if report.format < 2 or report.writer is None or report.foreign:
        return
    if entries.starts.get((report.writer, report.start_hash or "")) != kid:
        what = "chain" if report.anchor is None and report.segment in (None, 0) else "segment"
        report.problems.append(Problem(report.path, 0, f"its {what} is not on the {MANIFEST} (copied in or forged?)"))
        return
    if report.anchor is not None:
        _check_anchor(report, entries)
    end = entries.ends.get(report.writer)
    if not report.tail or end is None or report.last == end:
        return
    if report.last is None or report.last[0] < end[0]:
        ends = "holds no record" if report.last is None else f"ends at seq {report.last[0]}"
        message = f"the manifest saw this chain close at seq {end[0]}, but the file {ends}: truncated"
    else:
        message = f"its last record is not the chain.end (seq {end[0]}) the manifest saw (replaced or appended to?)"
    report.problems.append(Problem(report.path, 0, message))


def _check_anchor(report: Report, entries: _Entries) -> None:
    """A chain checked from a segment's anchor: the segments before it must have been pruned, the last of them
    ending with the record the anchor follows (or be here, but not given)."""
    assert report.anchor is not None and report.writer is not None
    seq, prev = report.anchor
    segment = report.segment
    if report.given_from:
        report.notes.append(f"checked from its anchor at seq {seq}: the earlier segments were not given")
        return
    pruned = entries.pruned.get((report.writer, segment - 1 if segment is not None else None))
    if pruned is None:
        message = f"it starts at its anchor (seq {seq}), but the segments before it are missing and not on the "
        report.problems.append(Problem(report.path, 0, message + f"{MANIFEST} as pruned (deleted?)"))
    elif pruned != (seq - 1, prev):
        message = f"its anchor follows seq {seq - 1}, but the segment pruned before it ended at seq {pruned[0]}"
        report.problems.append(Problem(report.path, 0, message + " (a segment deleted after it?)"))
    else:
        report.notes.append(f"starts at anchor seq {seq} (segment {segment}): the earlier segments were pruned")
