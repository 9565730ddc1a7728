"""``paddock keys create|rotate``: a new key, shown once, and its governance-file entry."""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from service.cli.common import tool_settings
from service.governance.keys import hash_key, new_key, new_key_id
from service.governance.policy import GovernanceFile, valid_id
from service.governance.reload import GovernanceError, load_governance


class KeysError(ValueError):
    pass


def parse_when(value: str, now: datetime) -> datetime:
    """``90d``/``12h`` from now, or an ISO date/time (UTC unless it says otherwise)."""
    match = re.fullmatch(r"(\d+)([dh])", value)
    if match:
        amount = int(match.group(1))
        return now + (timedelta(days=amount) if match.group(2) == "d" else timedelta(hours=amount))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise KeysError(f"not a date or a duration like 90d: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _secret(args: argparse.Namespace) -> bytes | None:
    """The server secret: --secret-file, else PADDOCK_KEY_SECRET_FILE (the file the server reads)."""
    path = args.secret_file or tool_settings().key_secret_file
    return path.read_bytes().strip() if path else None


def make_entry(args: argparse.Namespace, now: datetime) -> tuple[str, dict[str, Any]]:
    if not valid_id(args.tenant):
        raise KeysError(f"not a valid tenant id: {args.tenant!r}")
    key = new_key()
    entry: dict[str, Any] = {
        "id": args.id or new_key_id(args.tenant, now),
        "hash": hash_key(key, _secret(args)),
        "created": now.isoformat(timespec="seconds"),
    }
    if args.expires:
        entry["expires"] = parse_when(args.expires, now).isoformat(timespec="seconds")
    if args.models:
        entry["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    return key, entry


def append_entry(path: Path, tenant: str, entry: dict[str, Any], expire: tuple[str, datetime] | None = None) -> None:
    """Add the entry under its tenant (and set an old key's expiry); validated, written atomically."""
    try:
        load_governance(path)
    except GovernanceError as error:
        raise KeysError(str(error)) from None
    data = yaml.safe_load(path.read_text()) or {}
    tenants = {t.get("id"): t for t in data.get("tenants") or []}
    if tenant not in tenants:
        raise KeysError(f"{path}: no tenant {tenant!r}; add the tenant first")
    keys = tenants[tenant].setdefault("keys", []) or []
    tenants[tenant]["keys"] = keys
    if expire is not None:
        old = next((k for k in keys if k.get("id") == expire[0]), None)
        if old is None:
            raise KeysError(f"{path}: tenant {tenant!r} has no key {expire[0]!r}")
        old["expires"] = expire[1].isoformat(timespec="seconds")
    keys.append(entry)
    GovernanceFile.model_validate(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".governance-")
    with os.fdopen(fd, "w") as handle:
        handle.write(yaml.safe_dump(data, sort_keys=False))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _print(key: str, tenant: str, entry: dict[str, Any], path: Path | None) -> None:
    print(f"API key (shown once; store it now): {key}")
    print()
    if path:
        print(f"Added to tenant `{tenant}` in {path} (Paddock reloads it within a second):")
    else:
        print(f"Paste this entry under tenant `{tenant}`'s keys: in the governance file:")
    print("  " + yaml.safe_dump([entry], sort_keys=False).replace("\n", "\n  ").rstrip())


def cmd_create(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    key, entry = make_entry(args, now)
    if args.append:
        append_entry(args.append, args.tenant, entry)
    _print(key, args.tenant, entry, args.append)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    """A new key for the tenant; the old one stays valid for the overlap, then expires."""
    now = datetime.now(UTC)
    key, entry = make_entry(args, now)
    until = parse_when(args.overlap, now)
    append_entry(args.append, args.tenant, entry, expire=(args.old_key, until))
    _print(key, args.tenant, entry, args.append)
    print(f"\nThe old key `{args.old_key}` stays valid until {until.isoformat(timespec='seconds')}.")
    return 0


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create or rotate API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key: printed once, with its entry (the hash, never the key)")
    rotate = actions.add_parser("rotate", help="a new key for a tenant; the old key expires after an overlap")
    for parser in (create, rotate):
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--models", help="comma-separated allow-list for this key (default: the tenant's)")
        parser.add_argument("--expires", help="e.g. 90d, 12h or 2027-01-31")
        parser.add_argument("--id", help="key id (default: <tenant>-<date>-<random>)")
        parser.add_argument(
            "--secret-file",
            type=Path,
            help="server secret: store an HMAC-SHA-256 hash (default: $PADDOCK_KEY_SECRET_FILE)",
        )
    create.add_argument("--append", type=Path, help="add the entry to this governance file")
    create.set_defaults(func=cmd_create)
    rotate.add_argument("--old-key", required=True, help="id of the key being replaced")
    rotate.add_argument("--overlap", default="7d", help="how long the old key stays valid (default 7d)")
    rotate.add_argument("--append", type=Path, required=True, help="the governance file to update")
    rotate.set_defaults(func=cmd_rotate)
