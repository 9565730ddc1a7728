"""Attacks on the audit log that a chain alone cannot see: a deleted writer file, a tail cut from an open chain,
a chain re-hashed with plain SHA-256; and the sealed heads and manifest that catch them (audit_chain.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli.audit import UNAUTHENTICATED_EXIT, register
from service.governance.audit import GENESIS, AuditLog, append_manifest, verify
from service.governance.audit_chain import HEAD_SIZE, MANIFEST, START, key_id, parse_head, seal
from service.governance.audit_verify import check_file, verify_paths

KEY = b"audit-test-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def writer(directory: Path, name: str, records: int = 3, key: bytes | None = None, close: bool = True) -> Path:
    log = AuditLog(directory, key=key, writer_id=name)
    for i in range(records):
        log.write({"event": "request", "request_id": f"{name}-{i}", "status": 200})
    if close:
        log.close()
    return log.path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def messages(problems: list) -> list[str]:
    return [p.message for p in problems]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    root = argparse.ArgumentParser(prog="paddock")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["audit", "verify", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_every_record_reseals_the_head_and_the_manifest_names_each_writer(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, writer_id="w1", key=KEY)
    head_file = tmp_path / "audit-w1.head"
    for i in range(3):
        written = log.write({"event": "request", "request_id": str(i)})
        raw = head_file.read_bytes()
        head = parse_head(raw)
        assert len(raw) == HEAD_SIZE and (head.seq, head.hash) == (written["seq"], written["hash"])
        assert head.kid == key_id(KEY) and head.sealed_by("w1", KEY) and not head.sealed_by("w2", KEY)
    log.close()
    manifest = [json.loads(line) for line in lines(tmp_path / MANIFEST)]
    assert [r["event"] for r in manifest] == [START, "writer.start", "writer.end"]
    assert manifest[0]["prev"] == GENESIS and {r["writer"] for r in manifest} == {"manifest"}
    start = json.loads(lines(log.path)[0])
    assert (start["format"], start["segment"], manifest[1]["segment"]) == (3, 0, 0)
    assert (manifest[1]["chain_writer"], manifest[1]["file"], manifest[1]["start_hash"]) == (
        "w1",
        "audit-w1+000000.jsonl",
        start["hash"],
    )
    end = json.loads(lines(log.path)[-1])
    assert (manifest[2]["head_seq"], manifest[2]["head_hash"]) == (end["seq"], end["hash"])
    assert verify([tmp_path], key=KEY) == []


def test_a_deleted_writer_file_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = writer(tmp_path, "w1", key=KEY)
    gone = writer(tmp_path, "w2", key=KEY)
    gone.unlink()
    (tmp_path / "audit-w2.head").unlink()
    expected = "audit-w2+000000.jsonl is on the manifest but missing (deleted?)"
    assert expected in messages(verify([tmp_path], key=KEY))  # the directory
    assert expected in messages(verify(sorted(tmp_path.glob("*.jsonl")), key=KEY))  # what a shell glob still finds
    key_file = tmp_path.parent / "k"
    key_file.write_bytes(KEY)
    code, out = cli(["--key-file", str(key_file), str(kept)], capsys)
    assert code == 1 and expected in out


def test_a_deleted_manifest_or_head_is_detected(tmp_path: Path) -> None:
    path = writer(tmp_path, "w1")
    (tmp_path / "audit-w1.head").unlink()
    assert "its sealed head audit-w1.head is missing (deleted?)" in messages(verify([path]))[0]
    (tmp_path / MANIFEST).unlink()
    assert "the manifest is missing (deleted?)" in messages(verify([path]))


def test_a_tail_cut_from_an_open_chain_is_detected_with_allow_open(tmp_path: Path) -> None:
    path = writer(tmp_path, "live", records=5, close=False)  # its writer is still running
    assert verify([path], allow_open=True) == []
    path.write_text("".join(lines(path)[:-2]))  # two records cut, in place
    assert messages(verify([path], allow_open=True)) == [
        "the file ends at seq 3, but its sealed head is seq 5: records were cut from its end"
    ]


def test_a_closed_chain_cut_to_look_open_is_detected_even_without_its_head(tmp_path: Path) -> None:
    path = writer(tmp_path, "w1", records=5)
    path.write_text("".join(lines(path)[:-2]))  # chain.end and one record gone: it looks like a running writer
    (tmp_path / "audit-w1.head").write_bytes(seal("w1", 4, json.loads(lines(path)[-1])["hash"], None))  # re-sealed
    assert messages(verify([path], allow_open=True)) == [
        "the manifest saw this chain close at seq 6, but the file ends at seq 4: truncated"
    ]


def test_a_head_sealed_without_the_key_is_refused(tmp_path: Path) -> None:
    path = writer(tmp_path, "w1", records=5, key=KEY, close=False)
    path.write_text("".join(lines(path)[:-2]))
    last = json.loads(lines(path)[-1])
    (tmp_path / "audit-w1.head").write_bytes(seal("w1", last["seq"], last["hash"], None))  # the forger has no key
    assert messages(verify([path], key=KEY, allow_open=True)) == [
        "its sealed head audit-w1.head does not carry a valid seal for this chain (forged or replaced?)"
    ]


def forge_without_the_key(directory: Path) -> Path:
    """What someone without the key does to a keyed directory: edit a record, re-hash everything with plain
    SHA-256 (chain, head, manifest), as Paddock would have written it without a key."""
    path = directory / "audit-w1+000000.jsonl"
    out, prev = [], GENESIS
    for line in lines(path):
        record = {k: v for k, v in json.loads(line).items() if k != "hash"}
        record["prev"] = prev
        if record.get("event") == START:
            record["hash_alg"] = "sha256"
        if record.get("request_id") == "w1-1":
            record["status"] = 500
        body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        prev = hashlib.sha256(body.encode()).hexdigest()
        out.append(body[:-1] + f',"hash":"{prev}"}}\n')
    path.write_text("".join(out))
    last = json.loads(out[-1])
    (directory / "audit-w1.head").write_bytes(seal("w1", last["seq"], last["hash"], None))
    (directory / MANIFEST).unlink()
    (directory / f"{MANIFEST}.head").unlink()
    start = {"event": "writer.start", "chain_writer": "w1", "file": path.name, "start_hash": json.loads(out[0])["hash"]}
    append_manifest(directory, start, None)
    end = {"event": "writer.end", "chain_writer": "w1", "head_seq": last["seq"], "head_hash": last["hash"]}
    append_manifest(directory, end, None)
    return path


def test_a_chain_re_hashed_with_plain_sha256_is_caught_with_the_key_and_flagged_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer(tmp_path, "w1", key=KEY)
    path = forge_without_the_key(tmp_path)
    assert verify([tmp_path]) == []  # consistent: a key-less check cannot tell
    code, out = cli([str(tmp_path)], capsys)
    assert code == UNAUTHENTICATED_EXIT and "UNAUTHENTICATED" in out and f"{path}: ok" in out
    code, _ = cli(["--allow-unauthenticated", str(tmp_path)], capsys)
    assert code == 0
    key_file = tmp_path.parent / "k"
    key_file.write_bytes(KEY)
    code, out = cli(["--key-file", str(key_file), str(tmp_path)], capsys)
    assert code == 1 and "no record's hash matches its content" in out and "UNAUTHENTICATED" not in out


def test_a_keyed_chain_only_re_hashed_is_caught_even_without_the_key(tmp_path: Path) -> None:
    """The manifest still lists the chain under its real key: a forger who leaves the manifest alone is seen."""
    writer(tmp_path, "w1", key=KEY)
    manifest = (tmp_path / MANIFEST).read_bytes()
    forge_without_the_key(tmp_path)
    (tmp_path / MANIFEST).write_bytes(manifest)
    assert "its chain is not on the audit.manifest (copied in or forged?)" in messages(verify([tmp_path]))


def test_writers_with_different_keys_share_a_directory(tmp_path: Path) -> None:
    old = writer(tmp_path, "old")  # before a key was configured
    new = writer(tmp_path, "new", key=KEY)
    reports = {Path(r.path).name: r for r in verify_paths([old, new], key=KEY)}
    assert reports["audit-new+000000.jsonl"].problems == [] and reports[MANIFEST].problems == []
    assert reports[MANIFEST].notes == ["3 record(s) hashed with another key (or none): not checked with this one"]
    assert (
        "no record's hash matches" in reports["audit-old+000000.jsonl"].problems[0].message
    )  # needs no key, not this one
    keyless = {Path(r.path).name: r for r in verify_paths([old])}
    assert keyless["audit-old+000000.jsonl"].problems == [] and keyless[MANIFEST].problems == []
    assert keyless[MANIFEST].notes == [
        "its last record and head are hashed with another key (or none): the head is not checked",
        "2 record(s) hashed with another key (or none): not checked with this one",
    ]


def test_a_foreign_record_after_keyed_ones_is_a_problem(tmp_path: Path) -> None:
    writer(tmp_path, "w1", key=KEY)
    writer(tmp_path, "w2")  # written without the key after keyed records: or by someone who has none
    found = messages(verify([tmp_path / "audit-w1+000000.jsonl"], key=KEY))
    assert "record hashed with another key (or none) after records hashed with this one" in found


def test_format_1_chains_still_verify_with_a_note(tmp_path: Path) -> None:
    """A chain written before sealed heads and the manifest (no ``format`` in chain.start)."""
    out, prev = [], GENESIS
    for seq, event in enumerate([START, "request", "chain.end"]):
        record = {"event": event, "seq": seq, "prev": prev, "writer": "old", "time": "2025-01-01T00:00:00.000Z"}
        if event == START:
            record["hash_alg"] = "sha256"
        body = json.dumps(record, sort_keys=True, separators=(",", ":"))
        prev = hashlib.sha256(body.encode()).hexdigest()
        out.append(body[:-1] + f',"hash":"{prev}"}}\n')
    path = tmp_path / "audit-old+000000.jsonl"
    path.write_text("".join(out))
    assert verify([path]) == []
    assert check_file(path).notes == [
        "format 1 (no sealed head): records cut from the end of an open chain cannot be detected"
    ]
    manifest = [r for r in verify_paths([path]) if r.path.endswith(MANIFEST)]
    assert manifest[0].notes == ["no manifest (format 1 files): a deleted writer file cannot be detected"]


CHILD = """
import sys
from pathlib import Path
from service.governance.audit import AuditLog
for i in range(20):
    log = AuditLog(Path(sys.argv[1]), writer_id=f"{sys.argv[2]}-{i}")
    log.write({"event": "request"})
    log.close()
"""


def test_processes_registering_at_once_keep_one_intact_manifest(tmp_path: Path) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), f"p{n}"], cwd=ROOT, env={**os.environ})
        for n in range(4)
    ]
    for child in children:
        assert child.wait(timeout=60) == 0
    assert verify([tmp_path]) == []
    assert len(lines(tmp_path / MANIFEST)) == 1 + 4 * 20 * 2  # its chain.start, then a start and an end per writer


def test_an_empty_directory_is_not_an_intact_log(tmp_path: Path) -> None:
    assert messages(verify([tmp_path])) == ["no audit files here"]


def test_a_manifest_with_a_torn_or_garbled_tail_restarts_visibly(tmp_path: Path) -> None:
    """A writer still starts (the service must not refuse to run), and the break stays on the record."""
    writer(tmp_path, "w1")
    with open(tmp_path / MANIFEST, "ab") as manifest:
        manifest.write(b'{"event": "garbage')  # no newline: torn, or scribbled on
    later = writer(tmp_path, "w2")
    found = messages(verify([tmp_path]))
    assert any("not valid JSON" in m for m in found) and "a second chain.start (two chains in one file?)" in found
    assert check_file(later).problems == []  # the new writer's own chain is whole
