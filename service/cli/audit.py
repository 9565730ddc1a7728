"""``paddock audit verify``: check audit log hash chains."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.common import tool_settings
from service.governance.audit import read_key_file, verify_file

KEY_FILE_ENV = "PADDOCK_AUDIT_KEY_FILE"  # Settings.audit_key_file


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
    for path in args.files:
        records, problems = verify_file(path, key, allow_open=args.allow_open)
        for problem in problems:
            print(problem)
        if problems:
            failed = True
        else:
            print(f"{path}: ok ({records} records)")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify FILE... [--allow-open] [--key-file PATH]``."""
    audit = subparsers.add_parser("audit", help="audit log tools")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = actions.add_parser(
        "verify",
        help="check audit files' hash chains; exit 1 on any problem",
        description="Check each audit file's hash chain: edited, reordered, deleted or truncated records fail.",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--allow-open",
        action="store_true",
        help="accept chains without a chain.end record (writers still running)",
    )
    verify.add_argument(
        "--key-file",
        type=Path,
        help=f"file holding the HMAC key the log was written with (default: ${KEY_FILE_ENV})",
    )
    verify.set_defaults(func=cmd_verify)
