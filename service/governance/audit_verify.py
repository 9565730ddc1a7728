"""Verifying audit logs: chains across their segments (``audit_verify_chain.py``), their sealed heads and the
manifest of each directory (``audit_verify_manifest.py``); records collected from stdout are ``audit_shipped.py``.

Without the HMAC key none of this is authenticated: whoever can write the
files can rewrite a chain, its head and the manifest consistently. The CLI
says so (``UNAUTHENTICATED``); a chain hashed with a key fails without it. No
local check finds a whole directory rolled back to an earlier copy of itself,
or the oldest segments deleted and their pruning forged without the key: ship
the records elsewhere (stdout) for that.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from service.governance.audit_chain import MANIFEST, parse_chain_name
from service.governance.audit_verify_chain import NO_END, Problem, Report, check_alone, check_file, check_run
from service.governance.audit_verify_manifest import check_manifest

__all__ = ["NO_END", "Problem", "Report", "check_file", "verify", "verify_file", "verify_paths"]


def verify_file(path: Path, key: bytes | None = None, allow_open: bool = False) -> tuple[int, list[Problem]]:
    """Check one chain file and its sealed head; return (records read, problems)."""
    report = check_file(path, key, allow_open)
    return report.records, report.problems


def _gather(paths: Iterable[Path]) -> tuple[list[Report], dict[Path, list[Path]]]:
    """Reports for directories with nothing in them, and the chain files to check by directory."""
    empty: list[Report] = []
    files: dict[Path, dict[Path, Path]] = {}  # directory -> resolved -> as given
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(given.glob("audit-*.jsonl"))
            if not found and not (given / MANIFEST).exists():
                empty.append(Report(str(given), problems=[Problem(str(given), 0, "no audit files here")]))
            files.setdefault(given.resolve(), {}).update({f.resolve(): f for f in found})
        else:
            files.setdefault(given.resolve().parent, {})[given.resolve()] = given
    return empty, {directory: list(found.values()) for directory, found in files.items()}


def _check_directory(given: list[Path], key: bytes | None, allow_open: bool) -> list[Report]:
    """Every file given in one directory, in the order given: named segments as the chains of their writers
    (at the place of each writer's first file), the rest alone."""
    runs: dict[str, dict[int, Path]] = {}
    order: list[Path | str] = []  # a file checked alone, or the writer of a run
    for path in given:
        parsed = parse_chain_name(path.name)
        if parsed is None or parsed[1] is None:
            order.append(path)
            continue
        if parsed[0] not in runs:
            order.append(parsed[0])
        runs.setdefault(parsed[0], {})[parsed[1]] = path
    reports: list[Report] = []
    for item in order:
        if isinstance(item, Path):
            reports.append(check_alone(item, key, allow_open))
        else:
            base = next(iter(runs[item].values())).parent  # as given: reports name paths as the user wrote them
            reports += check_run(base, item, list(runs[item]), key, allow_open)
    return reports


def verify_paths(paths: Iterable[Path], key: bytes | None = None, allow_open: bool = False) -> list[Report]:
    """Check chain files and directories (every ``audit-*.jsonl`` in them), then the manifest of each directory."""
    empty, by_directory = _gather(paths)
    reports: list[Report] = []
    for directory, given in by_directory.items():
        checked = _check_directory(given, key, allow_open)
        reports += checked
        manifest = check_manifest(directory, key, checked)
        if manifest is not None:
            reports.append(manifest)
    return empty + reports


def verify(paths: Iterable[Path], key: bytes | None = None, allow_open: bool = False) -> list[Problem]:
    """Check files (and their directories' manifests); an empty list means every chain is intact."""
    return [problem for report in verify_paths(paths, key, allow_open) for problem in report.problems]
