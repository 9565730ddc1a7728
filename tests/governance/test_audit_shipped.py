"""Records collected from stdout (log shipping) verify without the files (issue 16, item 7): the stdout line is the
record with its chain fields, and a record kept off stdout is declared by the next one (``not_echoed``), so a line
lost or deleted downstream fails verification."""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import pytest

from service.cli.audit import UNAUTHENTICATED_EXIT, register
from service.governance.audit import AuditLog, Rotation
from service.governance.audit_chain import segment_path
from service.governance.audit_shipped import verify_shipped

KEY = b"shipped-key-0123456789"


class Clock:
    def __call__(self) -> float:
        return 1_700_000_000.0


def shipped(directory: Path, writer: str, stdout: io.StringIO, requests: int = 20, close: bool = True) -> AuditLog:
    """A writer as the ingress writes: per request an admitted record (kept off stdout) and its completed one."""
    rotation = Rotation(max_file_bytes=3000, interval_s=0, max_total_bytes=0)
    log = AuditLog(directory, key=KEY, stdout=stdout, writer_id=writer, rotation=rotation, clock=Clock())
    for i in range(requests):
        log.write({"event": "request", "phase": "admitted", "request_id": f"{writer}-{i}"}, echo=False)
        if i % 4 == 0:
            log.write({"event": "request", "phase": "refused", "request_id": f"{writer}-x{i}", "count": 1})
        log.write({"event": "request", "phase": "completed", "request_id": f"{writer}-{i}", "status": 200})
    if close:
        log.close()
    return log


def collected(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(lines))
    return path


def problems(path: Path, **options: bool) -> list[str]:
    return [p.message for r in verify_shipped([path], KEY, **options) for p in r.problems]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    root = argparse.ArgumentParser(prog="paddock")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["audit", "verify", *argv])
    code = args.func(args)
    return int(code), capsys.readouterr().out


def two_writers(tmp_path: Path) -> tuple[list[str], AuditLog, AuditLog]:
    out_a, out_b = io.StringIO(), io.StringIO()
    a = shipped(tmp_path / "audit", "ingress-a", out_a)
    b = shipped(tmp_path / "audit", "ingress-b", out_b)
    assert a.segment > 0  # rotated: the shipped chain spans segments
    lines_a = [f"(ServeReplica:paddock:Ingress pid=11) {line}\n" for line in out_a.getvalue().splitlines()]
    lines_b = [
        f"\x1b[36m(ServeReplica:paddock:Ingress pid=12)\x1b[0m {line}\n" for line in out_b.getvalue().splitlines()
    ]
    merged = lines_a + lines_b + ['{"time":"…","level":"info","logger":"service","message":"a log line"}\n', "\n"]
    random.Random(7).shuffle(merged)  # a log pipeline interleaves the processes' lines
    return merged, a, b


def test_stdout_is_the_chain_and_verifies_with_prefixes_interleaving_and_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged, a, _ = two_writers(tmp_path)
    first = [json.loads(line) for line in segment_path(a.directory, a.writer_id, 0).read_text().splitlines()]
    assert [(r.get("phase"), r.get("not_echoed")) for r in first[1:4]] == [
        ("admitted", None),
        ("refused", 1),  # the next record on stdout declares the admitted one kept off it
        ("completed", None),
    ]
    path = collected(tmp_path, "collected.log", merged + merged[:5])  # delivered twice, at least once
    reports = verify_shipped([path], KEY)
    assert [(r.path, r.problems) for r in reports] == [("stdout:ingress-a", []), ("stdout:ingress-b", [])]
    notes = [n for r in reports for n in r.notes]
    assert any("delivered more than once" in n for n in notes)
    assert "1 line(s) of the input are not audit records (ignored)" in notes  # the log line (blank lines: nothing)
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    code, out = cli(["--shipped", "--key-file", str(key_file), str(path)], capsys)
    assert code == 0 and "stdout:ingress-a: ok" in out and "stdout:ingress-b: ok" in out
    code, out = cli(["--shipped", str(path)], capsys)
    assert code == 1 and "no record's hash matches its content" in out  # written with the key: fails without it


def test_the_stdout_copy_equals_the_files_records_less_those_kept_off_it(tmp_path: Path) -> None:
    out = io.StringIO()
    log = shipped(tmp_path, "w", out)
    in_files = [
        line for path in sorted(tmp_path.glob("audit-w+*.jsonl")) for line in path.read_text().splitlines(keepends=True)
    ]
    assert out.getvalue() == "".join(line for line in in_files if '"phase":"admitted"' not in line)
    assert log.segment > 0


def test_a_shipped_record_lost_or_deleted_fails(tmp_path: Path) -> None:
    out = io.StringIO()
    shipped(tmp_path / "audit", "w", out)
    lines = out.getvalue().splitlines(keepends=True)
    completed = next(i for i, line in enumerate(lines) if '"phase":"completed"' in line and i > 3)
    refused = next(i for i, line in enumerate(lines) if '"phase":"refused"' in line and i > 3)
    for cut in (completed, refused):
        found = problems(collected(tmp_path, f"cut{cut}.log", lines[:cut] + lines[cut + 1 :]))
        assert any("missing before seq" in m and "lost in shipping or deleted" in m for m in found), found


def test_a_shipped_record_edited_reordered_or_cut_at_the_end_fails(tmp_path: Path) -> None:
    out = io.StringIO()
    shipped(tmp_path / "audit", "w", out)
    lines = out.getvalue().splitlines(keepends=True)
    edited = lines[:]
    edited[5] = edited[5].replace('"status":200', '"status":500')
    assert any("hash does not match" in m for m in problems(collected(tmp_path, "edited.log", edited)))
    swapped = lines[:]
    swapped[5] = swapped[5].replace('"seq":', '"seq":1', 1)  # a record moved elsewhere in the chain: its hash breaks
    assert problems(collected(tmp_path, "moved.log", swapped))
    assert any("no chain.end" in m for m in problems(collected(tmp_path, "cut.log", lines[:-3])))
    assert problems(collected(tmp_path, "cut.log", lines[:-3]), allow_open=True) == []  # its writer may still run
    start_cut = problems(collected(tmp_path, "start.log", lines[10:]))
    assert start_cut == []  # a log store's window: noted, not a problem
    notes = [n for r in verify_shipped([tmp_path / "start.log"], KEY) for n in r.notes]
    assert any(n.startswith("starts at seq") for n in notes)


def test_without_a_key_shipped_records_verify_but_unauthenticated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PADDOCK_AUDIT_KEY_FILE", raising=False)
    out = io.StringIO()
    log = AuditLog(tmp_path / "audit", stdout=out, writer_id="plain")
    log.write({"event": "request", "phase": "admitted"}, echo=False)
    log.write({"event": "request", "phase": "completed"})
    log.close()
    path = collected(tmp_path, "plain.log", out.getvalue().splitlines(keepends=True))
    code, text = cli(["--shipped", str(path)], capsys)
    assert code == UNAUTHENTICATED_EXIT and "stdout:plain: ok (3 records, UNAUTHENTICATED)" in text
    empty = collected(tmp_path, "empty.log", ["nothing here\n"])
    code, text = cli(["--shipped", "--allow-unauthenticated", str(empty)], capsys)
    assert code == 1 and "no audit records in the collected output" in text
    code, text = cli(["--shipped", "--allow-unauthenticated", str(tmp_path), str(path)], capsys)
    assert code == 1 and f"{tmp_path}: cannot read the file" in text and "stdout:plain: ok" in text
