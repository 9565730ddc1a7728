"""``paddock models approve|verify``: sign a model folder's manifest, and check a folder against its signature.

The signature is OpenSSF model signing's, written with an operator's EC key (``service/models/approval.py``);
a replica runs the same verification before it loads the model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.common import read_settings, tool_settings
from service.config.loader import ConfigError, load_config
from service.config.schema import DIGEST_PATTERN

if TYPE_CHECKING:  # model_signing is imported when a models command runs, not by every paddock command
    from service.models.approval import Artifact
    from service.models.digests import DigestCache

REFUSED_EXIT = 1


def _cache(folder: Path, enabled: bool) -> DigestCache:
    from service.models.digests import DigestCache

    return DigestCache.for_folder(tool_settings().cache_dir if enabled else None, folder)


def _print(artifact: Artifact, as_json: bool) -> None:
    from service.models.approval import describe

    if as_json:
        print(json.dumps(describe(artifact)))
        return
    print(f"  artifact  {artifact.digest}")
    print(f"  key       {artifact.key}")
    print(
        f"  files     {artifact.files} ({artifact.total_bytes / 1e9:.2f} GB; "
        f"hashed {artifact.hashed_bytes / 1e9:.2f} GB in {artifact.seconds:.2f}s)"
    )


def cmd_approve(args: argparse.Namespace) -> int:
    from service.models.approval import approve
    from service.models.digests import FolderError

    folder: Path = args.dir
    password = args.password_file.read_bytes().rstrip(b"\r\n") if args.password_file else None
    try:
        artifact = approve(
            folder,
            args.key,
            signature=args.signature,
            password=password,
            cache=_cache(folder, True),
            workers=args.workers,
        )
    except (FolderError, ValueError, TypeError) as error:  # cryptography: a bad key, a wrong password
        print(f"paddock: cannot approve {folder}: {error}", file=sys.stderr)
        return 2
    target = args.signature or folder / "model.sig"
    if not args.json:
        print(f"approved {folder}: wrote {target}")
    _print(artifact, args.json)
    if not args.json:
        print(f"Trust it with the public key in approval.keys (its fingerprint is {artifact.key}).")
    return 0


def _trust(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """The keys (--key, else the config's approval.keys) and the revocation list (the config's, and --revoked)."""
    approval = load_config(read_settings(**({"config": args.config} if args.config else {})).config).approval
    keys = list(args.key) if args.key else [Path(k).expanduser() for k in approval.keys]
    for digest in args.revoked:
        if not re.match(DIGEST_PATTERN, digest):
            raise ConfigError(f"--revoked {digest!r} is not sha256:<64 lowercase hex digits>")
    return keys, [*approval.revoked, *args.revoked]


def cmd_verify(args: argparse.Namespace) -> int:
    from service.models.approval import ArtifactRefused, verify

    folder: Path = args.dir
    keys, revoked = _trust(args)
    if not keys:
        print(
            "paddock: no key to verify with: pass --key PUB, or a --config whose approval.keys lists one",
            file=sys.stderr,
        )
        return 2
    try:
        artifact = verify(
            folder,
            keys,
            revoked=revoked,
            signature=args.signature,
            cache=_cache(folder, not args.no_cache),
            workers=args.workers,
        )
    except ArtifactRefused as refusal:
        if args.json:
            print(
                json.dumps(
                    {
                        "folder": str(folder),
                        "approved": False,
                        "reason": refusal.reason,
                        "files": list(refusal.files),
                        "problem": str(refusal),
                    }
                )
            )
        print(f"paddock: REFUSED ({refusal.reason}): {refusal}", file=sys.stderr)
        return REFUSED_EXIT
    if not args.json:
        print(f"approved: {folder}")
    _print(artifact, args.json)
    return 0


def register(sub: Any) -> None:
    models = sub.add_parser("models", help="approve model folders and verify them (approved model artifacts)")
    actions = models.add_subparsers(dest="action", required=True)
    approve_cmd = actions.add_parser("approve", help="sign the manifest of every file in DIR with an operator key")
    verify_cmd = actions.add_parser("verify", help="check DIR against its signature, as a replica does before loading")
    for parser in (approve_cmd, verify_cmd):
        parser.add_argument("dir", type=Path, metavar="DIR", help="the model folder")
        parser.add_argument("--signature", type=Path, help="the signature file (default: DIR/model.sig)")
        parser.add_argument("--workers", type=int, default=4, help="files hashed at once (default 4)")
        parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    approve_cmd.add_argument("--key", type=Path, required=True, help="the operator's EC private key (PEM)")
    approve_cmd.add_argument("--password-file", type=Path, help="the private key's password, if it is encrypted")
    approve_cmd.set_defaults(func=cmd_approve)
    verify_cmd.add_argument(
        "--key",
        type=Path,
        action="append",
        default=[],
        help="a trusted public key (PEM); repeatable (default: approval.keys of the service config)",
    )
    verify_cmd.add_argument("--config", type=Path, help="service config for approval.keys and approval.revoked")
    verify_cmd.add_argument(
        "--revoked", action="append", default=[], metavar="DIGEST", help="a revoked key fingerprint or artifact digest"
    )
    verify_cmd.add_argument("--no-cache", action="store_true", help="hash every file, not only those that changed")
    verify_cmd.set_defaults(func=cmd_verify)
