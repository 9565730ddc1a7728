"""The admin API: kill switch, keys and usage export, on its own port.

Every route but ``/health`` and ``/openapi.json`` (its OpenAPI document, made
from the dispatch table) needs the admin token (never a tenant key). Kills go
to the shared state store, so every ingress on every node applies them within
a second, and they survive restarts and reloads. A method a path does not take
is a 405 that names the ones it does (``Allow``).
Every change is an audit record with its before and after, and so is every
request refused for its token (action ``login_failed``).
"""

from __future__ import annotations

import csv
import hmac
import io
import json
from datetime import UTC, datetime
from urllib.parse import parse_qs

from service.api.asgi import (
    REQUEST_ID_HEADER,
    Receive,
    Scope,
    Send,
    answer_errors,
    read_body,
    request_id,
    send_bytes,
    send_json,
    sole_header,
)
from service.governance.governor import Governor
from service.governance.keys import bearer
from service.governance.store.base import Store
from service.protocol import errors
from service.protocol.body import json_object
from service.protocol.openapi import KILL_SCOPES, admin_document
from service.protocol.routes import HEALTH, OPENAPI

SCOPE_KINDS = KILL_SCOPES


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if ts else None


class AdminApp:
    def __init__(self, governor: Governor, store: Store, token: str) -> None:
        self._governor = governor
        self._store = store
        self._token = token.encode()
        self._routes = {
            ("GET", "/admin/v1/kills"): self._kills,
            ("POST", "/admin/v1/disable"): self._disable,
            ("POST", "/admin/v1/enable"): self._enable,
            ("GET", "/admin/v1/keys"): self._keys,
            ("GET", "/admin/v1/usage"): self._usage,
        }
        self._document = json.dumps(admin_document(self._routes)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(REQUEST_ID_HEADER, request_id(scope))]
        await answer_errors(self._dispatch(scope, receive, send, headers), send, headers)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]) -> None:
        path, method = scope["path"], scope["method"]
        if path in (HEALTH, OPENAPI):  # no token
            if method not in errors.READ_METHODS:
                raise errors.method_not_allowed(method, path, errors.READ_METHODS)
            if path == HEALTH:
                await send_json(send, 200, {"status": "ok"}, headers)
            else:
                await send_bytes(send, 200, self._document, headers=headers)
            return
        try:
            given = (bearer(sole_header(scope, b"authorization")) or "").encode()
        except errors.APIError:  # two Authorization headers: refused (400), and on the record like a wrong token
            self._login_failed(scope, "duplicate_header")
            raise
        if not self._token or not hmac.compare_digest(given, self._token):
            self._login_failed(scope, "invalid_admin_token")
            raise errors.APIError(401, "A valid admin token is required.", code="invalid_admin_token")
        handler = self._routes.get((method, path))
        if handler is None:
            allowed = tuple(m for m, p in self._routes if p == path)
            raise errors.method_not_allowed(method, path, allowed) if allowed else errors.route_not_found(path)
        await handler(scope, receive, send, headers)

    async def _kills(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]) -> None:
        state = await self._store.kills()
        await send_json(send, 200, {"version": state.version, "disabled": state.scopes}, headers)

    async def _target(self, scope: Scope, receive: Receive) -> tuple[str, str]:
        body = json_object(await read_body(scope, receive, 64 * 1024))
        kind, target = body.get("scope"), body.get("id")
        if kind not in SCOPE_KINDS:
            raise errors.invalid_request(f"scope must be one of {', '.join(SCOPE_KINDS)}", param="scope")
        if kind == "all":
            return "all", str(body.get("reason") or "")
        if not isinstance(target, str) or not target:
            raise errors.invalid_request("id is required", param="id")
        known = {
            "model": set(self._governor.model_ids()),
            "tenant": {t.id for t in self._governor.policy.policy.tenants},
            "key": {p.key.id for p in self._governor.policy.index.principals()},
        }[kind]
        if target not in known:
            raise errors.APIError(404, f"No {kind} `{target}`.", code="not_found", param="id")
        return f"{kind}:{target}", str(body.get("reason") or "")

    async def _disable(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]) -> None:
        target, reason = await self._target(scope, receive)
        before = (await self._store.kills()).scopes.get(target)
        state = await self._store.kill(target, reason, "admin")
        await self._governor.refresh_kills()  # this process at once; the others within their poll
        self._audit(scope, "disable", target, before, state.scopes.get(target))
        await send_json(send, 200, {"disabled": target, "version": state.version}, headers)

    async def _enable(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]) -> None:
        target, _ = await self._target(scope, receive)
        before = (await self._store.kills()).scopes.get(target)
        state = await self._store.revive(target, "admin")
        await self._governor.refresh_kills()
        self._audit(scope, "enable", target, before, state.scopes.get(target))
        await send_json(send, 200, {"enabled": target, "version": state.version}, headers)

    def _audit(self, scope: Scope, action: str, target: str, before: object, after: object) -> None:
        client = (scope.get("client") or ("unknown", 0))[0]
        self._governor.trail.admin(
            actor="admin-token", action=action, target=target, before=before, after=after, client=client
        )

    def _login_failed(self, scope: Scope, reason: str) -> None:
        """A request refused for its token: who tried (the peer address; the admin port trusts no proxy) and what."""
        client = (scope.get("client") or ("unknown", 0))[0]
        target = errors.bounded(f"{scope['method']} {scope['path']}", 256)
        self._governor.trail.admin(
            actor="unauthenticated", action="login_failed", target=target, before=None, after=reason, client=client
        )

    async def _keys(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]) -> None:
        used = await self._store.last_used()
        kills = (await self._store.kills()).scopes
        keys = [
            {
                "id": p.key.id,
                "tenant": p.tenant.id,
                "enabled": p.key.enabled and p.tenant.enabled,
                "disabled_by_admin": f"key:{p.key.id}" in kills or f"tenant:{p.tenant.id}" in kills,
                "expires": p.key.expires.isoformat() if p.key.expires else None,
                "created": p.key.created.isoformat() if p.key.created else None,
                "last_used": _iso(used.get(p.key.id)),
            }
            for p in self._governor.policy.index.principals()
        ]
        await send_json(send, 200, {"keys": keys}, headers)

    async def _usage(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]) -> None:
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        rows = await self._store.usage(query.get("since"), query.get("until"))
        fields = ["day", "tenant", "key_id", "model", "requests", "prompt_tokens", "completion_tokens"]
        if query.get("format", "json") == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(fields)
            writer.writerows([getattr(row, f) for f in fields] for row in rows)
            await send_bytes(send, 200, out.getvalue().encode(), b"text/csv; charset=utf-8", headers)
            return
        data = [{f: getattr(row, f) for f in fields} for row in rows]
        await send_bytes(send, 200, json.dumps({"usage": data}).encode(), headers=headers)
