"""``paddock audit verify``: check audit log hash chains, their sealed heads and the manifest of the writers.

Exit status: 0 when every chain is intact (and checked with the HMAC key); 1 when anything is wrong;
3 when everything is intact but was checked without a key (``UNAUTHENTICATED``: plain SHA-256 shows a chain
is consistent, not that nobody rewrote it), unless ``--allow-unauthenticated``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.common import tool_settings
from service.governance.audit import read_key_file
from service.governance.audit_shipped import verify_shipped
from service.governance.audit_verify import verify_paths

KEY_FILE_ENV = "PADDOCK_AUDIT_KEY_FILE"  # Settings.audit_key_file
UNAUTHENTICATED_EXIT = 3
UNAUTHENTICATED = (
    "UNAUTHENTICATED: checked without the HMAC key (--key-file or $" + KEY_FILE_ENV + "). Plain SHA-256 shows that "
    "these chains are consistent, not who wrote them: anyone who can write the files can re-hash a chain, its head "
    "and the manifest so that they verify. Write the log with a key and verify with it."
)


def cmd_verify(args: argparse.Namespace) -> int:
    key_file = args.key_file or tool_settings().audit_key_file
    key = None
    if key_file is not None:
        try:
            key = read_key_file(Path(key_file))
        except (OSError, ValueError) as error:
            print(f"paddock audit verify: cannot use the key file {key_file}: {error}", file=sys.stderr)
            return 1
    failed = False
    check = verify_shipped if args.shipped else verify_paths
    for report in check(args.paths, key, allow_open=args.allow_open):
        for problem in report.problems:
            print(problem)
        if report.problems:
            failed = True
        else:
            print(f"{report.path}: ok ({report.records} records{'' if key else ', UNAUTHENTICATED'})")
        for note in report.notes:
            print(f"{report.path}: note: {note}")
    if failed:
        return 1
    if key is None:
        print(UNAUTHENTICATED)
        return 0 if args.allow_unauthenticated else UNAUTHENTICATED_EXIT
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify PATH... [--allow-open] [--key-file PATH] [--allow-unauthenticated]``."""
    audit = subparsers.add_parser("audit", help="audit log tools")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = actions.add_parser(
        "verify",
        help="check audit files' hash chains; exit 1 on any problem, 3 if checked without the key",
        description=(
            "Check each audit file's hash chain and sealed head, and the manifest of its directory: edited, "
            "reordered, deleted or truncated records or segments, a deleted writer file and a chain cut short fail; "
            "segments pruned by retention are noted, and the rest checked from the next segment's anchor. A "
            "directory stands for every audit-*.jsonl in it. With --shipped, PATHs are output collected from "
            "stdout (log shipping; - for standard input): each writer's records are checked as a chain."
        ),
    )
    verify.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="audit files or directories (--shipped: collected output)"
    )
    verify.add_argument(
        "--shipped",
        action="store_true",
        help="PATHs hold audit records collected from stdout (any prefix before each record, other lines ignored)",
    )
    verify.add_argument(
        "--allow-open",
        action="store_true",
        help="accept chains without a chain.end record (writers still running); their sealed heads are still checked",
    )
    verify.add_argument(
        "--key-file",
        type=Path,
        help=f"file holding the HMAC key the log was written with (default: ${KEY_FILE_ENV})",
    )
    verify.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help=f"exit 0, not {UNAUTHENTICATED_EXIT}, when intact chains were checked without a key (still said so)",
    )
    verify.set_defaults(func=cmd_verify)
