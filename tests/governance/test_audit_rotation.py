"""Rotation and retention of the audit log (issue 16, item 7): segments by size and by time, one hash chain across
them, the directory bounded by retention, and verification that spans rotations and pruning but still fails on a
segment deleted from the middle, truncated or put out of order."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli.audit import register
from service.governance.audit import AuditLog, Rotation
from service.governance.audit_chain import (
    GENESIS,
    MANIFEST,
    SEGMENT_END,
    SEGMENT_START,
    START,
    canonical,
    digest,
    head_path,
    seal,
    segment_path,
)
from service.governance.audit_manifest import append_manifest
from service.governance.audit_retention import list_segments, prune, writer_alive
from service.governance.audit_verify import verify, verify_paths

KEY = b"audit-rotation-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]
PAD = "x" * 200  # a record is about 400 bytes


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def messages(problems: list) -> list[str]:
    return [p.message for p in problems]


def write(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.write({"event": "request", "request_id": f"r{i}", "pad": PAD})


def rotated(
    directory: Path, segments: int = 4, key: bytes | None = KEY, close: bool = True, total: int = 0, files: int = 0
) -> AuditLog:
    """A writer whose chain spans ``segments`` segments (rotated by size, about 5 records each)."""
    rotation = Rotation(max_file_bytes=2000, interval_s=0, max_total_bytes=total, max_files=files)
    log = AuditLog(directory, key=key, writer_id="w1", rotation=rotation, clock=Clock())
    while log.segment < segments - 1:
        write(log, 1, start=log.segment * 100)
    write(log, 2, start=9000)
    if close:
        log.close()
    return log


def segment(directory: Path, number: int, writer: str = "w1") -> Path:
    return segment_path(directory, writer, number)


def test_size_rotation_continues_one_chain_across_segments(tmp_path: Path) -> None:
    log = rotated(tmp_path, segments=4)
    files = sorted(tmp_path.glob("audit-w1+*.jsonl"))
    assert [f.name for f in files] == [f"audit-w1+00000{n}.jsonl" for n in range(4)]
    chain = [r for f in files for r in records(f)]
    assert [r["seq"] for r in chain] == list(range(len(chain)))  # one seq across the files
    assert chain[0]["prev"] == GENESIS
    for before, after in zip(chain, chain[1:], strict=False):
        assert after["prev"] == before["hash"]  # and one hash chain: each anchor follows the segment.end before it
    for number, path in enumerate(files):
        first, last = records(path)[0], records(path)[-1]
        assert first["event"] == (START if number == 0 else SEGMENT_START) and first["segment"] == number
        assert last["event"] == (SEGMENT_END if number < 3 else "chain.end")
        assert path.stat().st_size < 2000 + 1000  # the limit, passed by at most its last record and the end
    assert chain[-1]["event"] == "chain.end" and log.path == files[-1]
    manifest = records(tmp_path / MANIFEST)
    assert [(r["event"], r.get("segment")) for r in manifest[1:]] == [
        ("writer.start", 0),
        ("writer.segment", 1),
        ("writer.segment", 2),
        ("writer.segment", 3),
        ("writer.end", None),
    ]
    assert [r["anchor_hash"] for r in manifest[2:5]] == [records(f)[0]["hash"] for f in files[1:]]
    assert verify([tmp_path], key=KEY) == []
    assert verify(files, key=KEY) == []  # the files given one by one: the same chain


def test_time_rotation_follows_the_clock_at_utc_period_boundaries(tmp_path: Path) -> None:
    clock = Clock(86400 * 20_000 + 3600)  # 01:00 UTC
    log = AuditLog(tmp_path, writer_id="w1", rotation=Rotation(max_file_bytes=0, interval_s=86400), clock=clock)
    write(log, 3)
    clock.now += 22 * 3600  # 23:00: the same day
    write(log, 1, start=3)
    assert log.segment == 0
    clock.now += 3600  # midnight: the next record opens the next day's segment
    write(log, 1, start=4)
    assert log.segment == 1
    assert [r.get("request_id") for r in records(log.path)] == [None, "r4"]  # its anchor, then the record
    assert records(segment(tmp_path, 0))[-1]["reason"] == "time"
    clock.now += 3 * 86400  # quiet days: one rotation, not one per day passed
    write(log, 1, start=5)
    assert log.segment == 2
    log.close()
    log2 = AuditLog(tmp_path / "idle", writer_id="w2", rotation=Rotation(max_file_bytes=0, interval_s=60), clock=clock)
    clock.now += 600  # a segment holding only its start is not rotated for time alone
    write(log2, 1)
    log2.close()
    assert log2.segment == 0
    assert verify([tmp_path]) == [] and verify([tmp_path / "idle"]) == []


def test_retention_bounds_the_directory_and_verify_starts_at_the_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = rotated(tmp_path, segments=12, total=8000)
    present = sorted(tmp_path.glob("audit-w1+*.jsonl"))
    assert sum(p.stat().st_size for p in present) <= 8000 + 3000  # the limit, plus the open segment's overshoot
    first = int(present[0].name[-12:-6])
    assert first > 0 and [p.name for p in present] == [segment(tmp_path, n).name for n in range(first, 12)]
    pruned = [r for r in records(tmp_path / MANIFEST) if r["event"] == "writer.pruned"]
    assert [r["segment"] for r in pruned] == list(range(first))
    anchor = records(present[0])[0]
    assert (pruned[-1]["last_seq"], pruned[-1]["last_hash"]) == (anchor["seq"] - 1, anchor["prev"])
    reports = {Path(r.path).name: r for r in verify_paths([tmp_path], key=KEY)}
    assert all(not r.problems for r in reports.values())
    assert reports[present[0].name].notes == [
        f"starts at anchor seq {anchor['seq']} (segment {first}): the earlier segments were pruned"
    ]
    key_file = tmp_path.parent / "key"
    key_file.write_bytes(KEY)
    assert cli(["--key-file", str(key_file), str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{present[0]}: ok" in out and f"note: starts at anchor seq {anchor['seq']}" in out
    assert log.path == present[-1]


def test_max_files_keeps_a_count_of_segments(tmp_path: Path) -> None:
    rotated(tmp_path, segments=8, files=3)
    assert len(list(tmp_path.glob("audit-w1+*.jsonl"))) == 3
    assert verify([tmp_path], key=KEY) == []


def test_a_segment_deleted_from_the_middle_fails(tmp_path: Path) -> None:
    rotated(tmp_path, segments=4)
    segment(tmp_path, 1).unlink()
    found = messages(verify([tmp_path], key=KEY))
    assert "audit-w1+000001.jsonl is on the manifest but missing (deleted?)" in found
    assert any(m.startswith("seq ") and "follows" in m for m in found)  # segment 2's anchor follows nothing here


def test_a_deleted_middle_segment_fails_even_with_its_manifest_entry_forged_away(tmp_path: Path) -> None:
    """Without the manifest's record of it, the chain itself still breaks at the gap."""
    rotated(tmp_path, segments=4, key=None)
    segment(tmp_path, 1).unlink()
    manifest = tmp_path / MANIFEST
    manifest.write_text("".join(line for line in lines(manifest) if "audit-w1+000001" not in line))
    found = messages(verify([tmp_path]))
    assert any("follows" in m for m in found)


def test_a_truncated_segment_fails(tmp_path: Path) -> None:
    rotated(tmp_path, segments=4)
    middle = segment(tmp_path, 1)
    middle.write_text("".join(lines(middle)[:-2]))  # its segment.end and a record cut off
    found = messages(verify([tmp_path], key=KEY))
    assert "the segment has no segment.end, but a later one follows (truncated?)" in found
    assert any("follows" in m for m in found)
    first_cut = segment(tmp_path, 2)
    first_cut.write_text("".join(lines(first_cut)[1:]))  # its anchor cut off
    assert any("not segment.start (start of the segment missing)" in m for m in messages(verify([tmp_path], key=KEY)))


def test_reordered_segments_fail(tmp_path: Path) -> None:
    rotated(tmp_path, segments=4)
    one, two = segment(tmp_path, 1), segment(tmp_path, 2)
    swap = tmp_path / "swap"
    one.rename(swap)
    two.rename(one)
    swap.rename(two)
    found = messages(verify([tmp_path], key=KEY))
    assert "it starts segment 2, but its name says 1 (renamed or reordered?)" in found
    assert any("follows" in m for m in found)


def test_the_last_segment_deleted_or_cut_fails(tmp_path: Path) -> None:
    rotated(tmp_path, segments=3, close=False)
    assert verify([tmp_path], key=KEY, allow_open=True) == []
    last = segment(tmp_path, 2)
    last.write_text("".join(lines(last)[:-1]))  # an open chain cut: its head still names the record
    assert any("records were cut from its end" in m for m in messages(verify([tmp_path], key=KEY, allow_open=True)))
    last.unlink()
    found = messages(verify([tmp_path], key=KEY, allow_open=True))
    assert "the segment ends, but its next segment is missing (deleted?)" in found
    assert "audit-w1+000002.jsonl is on the manifest but missing (deleted?)" in found


def test_the_oldest_segments_deleted_without_pruning_fail(tmp_path: Path) -> None:
    """Retention records each pruning first: segments deleted by hand at the start are not taken for pruned."""
    rotated(tmp_path, segments=4)
    segment(tmp_path, 0).unlink()
    segment(tmp_path, 1).unlink()
    found = messages(verify([tmp_path], key=KEY))
    assert any("the segments before it are missing and not on the audit.manifest as pruned" in m for m in found)


def test_a_segment_deleted_after_the_pruned_ones_fails(tmp_path: Path) -> None:
    rotated(tmp_path, segments=10, total=6000)
    first = min(n for n in range(10) if segment(tmp_path, n).exists())
    segment(tmp_path, first).unlink()  # as if retention had pruned one more, without saying so
    found = messages(verify([tmp_path], key=KEY))
    assert any("the segments before it are missing and not on the audit.manifest as pruned" in m for m in found)
    assert f"audit-w1+{first:06d}.jsonl is on the manifest but missing (deleted?)" in found


def test_files_given_one_at_a_time_are_checked_from_their_anchor(tmp_path: Path) -> None:
    rotated(tmp_path, segments=3)
    reports = verify_paths([segment(tmp_path, 1)], key=KEY)
    assert [r.problems for r in reports] == [[], []]
    assert reports[0].notes == [
        "its next segment is not checked with it",
        f"checked from its anchor at seq {records(segment(tmp_path, 1))[0]['seq']}: the earlier segments were not given",
    ]


def test_retention_never_prunes_a_live_writers_open_segment(tmp_path: Path) -> None:
    rotation = Rotation(max_file_bytes=2000, interval_s=0, max_total_bytes=4000)
    other = AuditLog(tmp_path, writer_id="live", rotation=Rotation(max_file_bytes=0, interval_s=0))
    write(other, 30)  # one big open segment, over the limit on its own
    assert writer_alive(tmp_path, "live")
    mine = AuditLog(tmp_path, writer_id="w1", rotation=rotation, clock=Clock())
    write(mine, 40)
    assert other.path.exists() and mine.path.exists()  # each writer's open segment stays
    assert [s.number for s in list_segments(tmp_path)["w1"]] == [mine.segment]  # its own closed ones went
    other.close()
    assert not writer_alive(tmp_path, "live")
    write(mine, 10, start=40)  # the next rotation's pass may take the closed chain now
    assert "live" not in list_segments(tmp_path) and not (tmp_path / "audit-live.head").exists()
    mine.close()
    assert verify([tmp_path]) == []


KILLED = """
import sys, time
from pathlib import Path
from service.governance.audit import AuditLog, Rotation
log = AuditLog(Path(sys.argv[1]), writer_id="crashed", rotation=Rotation(max_file_bytes=0, interval_s=0))
log.write({"event": "request", "pad": "x" * 4000})
print("written", flush=True)
time.sleep(60)
"""


def test_a_crashed_writers_open_segment_is_pruned_once_it_is_gone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
        assert writer_alive(tmp_path, "crashed")
        assert prune(tmp_path, Rotation(max_total_bytes=1000), None) == []  # alive: its open segment stays
    finally:
        child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert not writer_alive(tmp_path, "crashed")  # the kernel dropped its lock with the process
    assert prune(tmp_path, Rotation(max_total_bytes=1000), None) == ["audit-crashed+000000.jsonl"]
    assert verify([tmp_path]) == []


WRITER = """
import sys
from pathlib import Path
from service.governance.audit import AuditLog, Rotation
rotation = Rotation(max_file_bytes=3000, interval_s=0, max_total_bytes=30000)
log = AuditLog(Path(sys.argv[1]), writer_id=sys.argv[2], rotation=rotation)
for i in range(300):
    log.write({"event": "request", "request_id": f"{sys.argv[2]}-{i}", "pad": "y" * 150})
log.close()
"""


def test_processes_rotating_and_pruning_one_directory_keep_it_verifiable(tmp_path: Path) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"p{n}"], cwd=ROOT, env={**os.environ})
        for n in range(4)
    ]
    for child in children:
        assert child.wait(timeout=120) == 0
    total = sum(p.stat().st_size for p in tmp_path.glob("audit-*.jsonl"))
    assert total <= 30000 + 4 * 3500
    pruned = [r for r in records(tmp_path / MANIFEST) if r["event"] == "writer.pruned"]
    assert len(pruned) == len({r["file"] for r in pruned}) > 0  # each segment pruned once, by one process
    assert verify([tmp_path]) == []


def cli(argv: list[str]) -> int:
    root = argparse.ArgumentParser(prog="paddock")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["audit", "verify", *argv])
    return int(args.func(args))


def format_2_chain(directory: Path, writer: str, close: bool = True) -> Path:
    """A chain as format 2 wrote it: one file per writer, no segments, a head and the manifest."""
    out, prev = [], GENESIS
    events = [START, "request", "request"] + (["chain.end"] if close else [])
    for seq, event in enumerate(events):
        record: dict[str, object] = {"event": event, "seq": seq, "prev": prev, "writer": writer, "time": "t"}
        if event == START:
            record.update(hash_alg="sha256", format=2)
        _, data = canonical(record)
        prev = digest(data, None)
        out.append(data[:-1].decode() + f',"hash":"{prev}"}}\n')
    path = directory / f"audit-{writer}.jsonl"
    path.write_text("".join(out))
    head_path(directory, writer).write_bytes(seal(writer, len(events) - 1, prev, None))
    start = {
        "event": "writer.start",
        "chain_writer": writer,
        "file": path.name,
        "start_hash": json.loads(out[0])["hash"],
    }
    append_manifest(directory, start, None)
    if close:
        append_manifest(
            directory, {"event": "writer.end", "chain_writer": writer, "head_seq": 3, "head_hash": prev}, None
        )
    return path


def test_format_2_directories_still_verify(tmp_path: Path) -> None:
    """A directory a format 2 writer wrote, then a format 3 writer joined; retention takes a closed format 2 file
    only (a format 2 writer holds no head lock that would tell a dead one from a live one)."""
    closed, running = format_2_chain(tmp_path, "old"), format_2_chain(tmp_path, "older", close=False)
    assert verify([tmp_path], allow_open=True) == []
    log = AuditLog(tmp_path, writer_id="new", rotation=Rotation(max_file_bytes=2000, interval_s=0, max_total_bytes=1))
    assert not closed.exists() and running.exists()  # pruned at the new writer's start: closed, so complete
    write(log, 12)
    log.close()
    assert running.exists() and [s.number for s in list_segments(tmp_path)["new"]] == [log.segment]
    reports = {Path(r.path).name: r for r in verify_paths([tmp_path], allow_open=True)}
    assert all(not r.problems for r in reports.values()), reports
    assert reports[f"audit-new+{log.segment:06d}.jsonl"].notes[0].startswith("starts at anchor seq")
