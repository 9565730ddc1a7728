"""Verifying audit records collected from stdout (log shipping), without the files they were written to.

The stdout copy is the records themselves: the same canonical JSON, with the
chain fields (``writer``, ``seq``, ``prev``, ``hash``). What a log pipeline
collects may interleave several writers, put text before each record (Ray's
``(ServeReplica:… pid=…)`` prefix, a CRI timestamp) and mix in other lines; it
may deliver a line twice or out of order. So the records are taken from each
line's first ``{``, grouped by writer and put in ``seq`` order, duplicates
dropped; other lines are ignored. Each record's hash is checked (with the key:
each record is authenticated on its own). Records the writer kept off stdout
(an admitted request's first half) leave gaps in ``seq``; the next record on
stdout declares them (``not_echoed``), so any other gap — a record lost in
shipping or deleted from the store — is a problem, and so is a ``prev`` that
does not name the record before it.

Limits: the head of a chain is not shipped, so records cut from the end of a
chain whose writer still runs are not found (``--allow-open``); records kept
off stdout are accounted for, not verified; and records before the first one
collected (a log store's retention) are noted, not found.
"""

from __future__ import annotations

import hmac
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from service.governance.audit_chain import CHAIN_FIELDS, END, GENESIS, MANIFEST_WRITER, NOT_ECHOED, START, canonical
from service.governance.audit_chain import digest as hash_of
from service.governance.audit_verify_chain import NO_END, Problem, Report

Collected = tuple[str, dict[str, Any]]  # (where: "file:line", the record)


def _record(line: str) -> dict[str, Any] | None:
    """The audit record a collected line carries, if any."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(record, dict) or any(f not in record for f in CHAIN_FIELDS):
        return None
    seq, writer = record["seq"], record["writer"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(writer, str) or writer == MANIFEST_WRITER:
        return None
    return record


def collect(paths: Iterable[Path]) -> tuple[dict[str, list[Collected]], int, list[Problem]]:
    """The audit records in files of collected output (``-``: standard input), by writer; how many other lines
    there were; and the files that could not be read."""
    writers: dict[str, list[Collected]] = {}
    ignored, unreadable = 0, []
    for path in paths:
        try:
            for number, line in enumerate(_lines(path), start=1):
                record = _record(line.rstrip("\r\n"))
                if record is None:
                    ignored += line.strip() != ""
                else:
                    writers.setdefault(record["writer"], []).append((f"{path}:{number}", record))
        except OSError as error:
            unreadable.append(Problem(str(path), 0, f"cannot read the file: {error.strerror or error}"))
    return writers, ignored, unreadable


def _lines(path: Path) -> Iterator[str]:
    if str(path) == "-":
        yield from sys.stdin
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        yield from lines


def _hash_ok(record: dict[str, Any], key: bytes | None) -> bool:
    try:
        _, data = canonical({k: v for k, v in record.items() if k != "hash"})
    except ValueError:
        return False
    stored = record["hash"]
    return isinstance(stored, str) and hmac.compare_digest(hash_of(data, key).encode(), stored.encode())


def _declared(record: dict[str, Any]) -> int:
    value = record.get(NOT_ECHOED, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _in_order(label: str, collected: list[Collected], report: Report) -> list[Collected]:
    """``collected`` by seq, each record once (a second delivery of the same record is dropped)."""
    unique: dict[int, Collected] = {}
    for where, record in sorted(collected, key=lambda item: item[1]["seq"]):
        seen = unique.get(record["seq"])
        if seen is None:
            unique[record["seq"]] = (where, record)
        elif seen[1]["hash"] != record["hash"]:
            report.problems.append(Problem(label, 0, f"two different records with seq {record['seq']} ({where})"))
    if len(unique) < len(collected):
        report.notes.append(f"{len(collected) - len(unique)} record(s) delivered more than once (ignored)")
    return list(unique.values())


def _check_links(label: str, records: list[Collected], report: Report) -> None:
    """Each record follows the one before it, or the records kept off stdout that it declares."""
    first = records[0][1]
    if first["seq"] == 0:
        if first.get("event") != START or first["prev"] != GENESIS:
            report.problems.append(Problem(label, 0, "seq 0 is not the chain.start (forged?)"))
    else:
        report.notes.append(f"starts at seq {first['seq']}: the records before it are not in the input")
    for (_, before), (where, record) in zip(records, records[1:], strict=False):
        missing, declared = record["seq"] - before["seq"] - 1, _declared(record)
        if record.get("event") == START:
            report.problems.append(Problem(label, 0, f"a second chain.start at seq {record['seq']} ({where})"))
        if missing != declared:
            lost = f"{missing - declared} record(s)" if missing > declared else "fewer records than it declares"
            report.problems.append(
                Problem(label, 0, f"{lost} missing before seq {record['seq']} ({where}): lost in shipping or deleted")
            )
        elif missing == 0 and record["prev"] != before["hash"]:
            report.problems.append(
                Problem(label, 0, f"seq {record['seq']}'s prev is not the hash of seq {before['seq']} ({where})")
            )


def check_writer(writer: str, collected: list[Collected], key: bytes | None, allow_open: bool) -> Report:
    """The collected records of one writer's chain."""
    label = f"stdout:{writer}"
    report = Report(label, writer=writer, format=3)
    records = _in_order(label, collected, report)
    report.records = len(records)
    failed = [where for where, record in records if not _hash_ok(record, key)]
    if failed and len(failed) == len(records) and len(records) > 1:
        hint = "wrong HMAC key, or written without one" if key else "written with an HMAC key? (give it to verify)"
        report.problems.append(Problem(label, 0, f"no record's hash matches its content: {hint}"))
        report.foreign = True
    else:
        report.problems += [
            Problem(label, 0, f"record hash does not match its content (edited?) ({w})") for w in failed
        ]
    _check_links(label, records, report)
    if records[-1][1].get("event") != END and not allow_open:
        report.problems.append(Problem(label, 0, NO_END))
    report.last = (records[-1][1]["seq"], str(records[-1][1]["hash"]))
    return report


def verify_shipped(paths: Iterable[Path], key: bytes | None = None, allow_open: bool = False) -> list[Report]:
    """Check every writer's chain among the records collected in ``paths``."""
    paths = list(paths)
    writers, ignored, unreadable = collect(paths)
    failed = [Report(p.path, problems=[p]) for p in unreadable]
    if not writers:
        where = ", ".join(map(str, paths))
        return [*failed, Report(where, problems=[Problem(where, 0, "no audit records in the collected output")])]
    reports = [check_writer(writer, collected, key, allow_open) for writer, collected in sorted(writers.items())]
    if ignored:
        reports[0].notes.append(f"{ignored} line(s) of the input are not audit records (ignored)")
    return failed + reports
