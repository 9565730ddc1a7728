"""``paddock admin …``: the kill switch, keys and usage, through the admin API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from service.cli.common import tool_settings
from service.config.settings import Settings


def _token(args: argparse.Namespace, settings: Settings) -> str:
    """PADDOCK_ADMIN_TOKEN, else the token file (--token-file, else the settings' one)."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = args.token_file or settings.resolved_admin_token_file()
    return path.read_text().strip()


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    settings = tool_settings()
    data = json.dumps(body).encode() if body is not None else None
    url = args.url or settings.admin_url
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("authorization", f"Bearer {_token(args, settings)}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _scope(args: argparse.Namespace) -> dict[str, Any]:
    if args.scope != "all" and not args.id:
        raise SystemExit(f"paddock admin {args.action}: give the {args.scope} id")
    return {"scope": args.scope, "id": args.id, "reason": getattr(args, "reason", None)}


def cmd_admin(args: argparse.Namespace) -> int:
    if args.action in ("disable", "enable"):
        status, body = call(args, "POST", f"/admin/v1/{args.action}", _scope(args))
    elif args.action == "status":
        status, body = call(args, "GET", "/admin/v1/kills")
    elif args.action == "keys":
        status, body = call(args, "GET", "/admin/v1/keys")
    else:
        query = {k: v for k, v in {"format": args.format, "since": args.since, "until": args.until}.items() if v}
        status, body = call(args, "GET", "/admin/v1/usage?" + urllib.parse.urlencode(query))
    text = body.decode()
    if args.action != "usage" or args.format != "csv":
        text = json.dumps(json.loads(body), indent=2) + "\n"
    (sys.stdout if status < 400 else sys.stderr).write(text)
    return 0 if status < 400 else 1


def register(sub: Any) -> None:
    admin = sub.add_parser("admin", help="kill switch, keys and usage (needs the admin token)")
    admin.add_argument("--url", help="admin API base URL (default: $PADDOCK_ADMIN_URL, else http://127.0.0.1:8001)")
    admin.add_argument("--token-file", type=Path, help="admin token file (default: the local state dir's)")
    actions = admin.add_subparsers(dest="action", required=True)
    for name, words in (("disable", "switch off at once (streams in flight end)"), ("enable", "switch back on")):
        parser = actions.add_parser(name, help=f"{words}: a model, tenant, key, or everything")
        parser.add_argument("scope", choices=["model", "tenant", "key", "all"])
        parser.add_argument("id", nargs="?")
        if name == "disable":
            parser.add_argument("--reason", default="")
    actions.add_parser("status", help="what is switched off")
    actions.add_parser("keys", help="keys with their tenant, state and last use")
    usage = actions.add_parser("usage", help="per-tenant usage for cost allocation")
    usage.add_argument("--format", choices=["json", "csv"], default="json")
    usage.add_argument("--since", help="first day, YYYY-MM-DD")
    usage.add_argument("--until", help="last day, YYYY-MM-DD")
    admin.set_defaults(func=cmd_admin)
