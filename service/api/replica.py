"""A model replica's own HTTP server: the ingress forwards requests here.

Plain ASGI around an :class:`~service.engine.base.Engine`. Only the ingress
may call it (a shared internal token); it enforces the replica's concurrency
limit, counts in-flight requests for autoscaling, and aborts the engine
request when the caller disconnects.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import MutableMapping
from typing import Any

from service.api.asgi import (
    REQUEST_ID_HEADER,
    Receive,
    Scope,
    Send,
    answer_errors,
    encode_headers,
    read_body,
    request_id,
    send_bytes,
    send_json,
    until_disconnect,
)
from service.api.context import Exchange
from service.api.upstream import (
    INTERNAL_TOKEN_HEADER,
    MAX_PROMPT_TOKENS_HEADER,
    SPECIAL_TOKENS_HEADER,
    forwarded_headers,
)
from service.engine.base import CallContext, Engine, EngineDead, JSONResult, StreamResult
from service.observability.tracing import Tracing, finish_span
from service.protocol import errors
from service.protocol.body import json_object
from service.protocol.routes import ROUTES, Operation

log = logging.getLogger(__name__)
SSE_CONTENT_TYPE = b"text/event-stream"


class ReplicaApp:
    """ASGI app serving one engine to the ingress."""

    def __init__(
        self, engine: Engine, token: str, max_ongoing: int, max_body_bytes: int, tracing: Tracing | None = None
    ) -> None:
        self._engine = engine
        self._tracing = tracing
        self._token = token.encode()
        self._max_ongoing = max_ongoing
        self._max_body_bytes = max_body_bytes
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        rid = request_id(scope)
        ctx = Exchange(scope, receive, send, rid, [(REQUEST_ID_HEADER, rid)])
        await answer_errors(self._authorised(ctx), send, ctx.headers)

    async def _authorised(self, ctx: Exchange) -> None:
        given = (ctx.header(INTERNAL_TOKEN_HEADER.encode()) or "").encode()
        if not hmac.compare_digest(given, self._token):
            raise errors.APIError(
                401, "Not an ingress of this service.", type="authentication_error", code="unauthorized"
            )
        await self._dispatch(ctx)

    async def _dispatch(self, ctx: Exchange) -> None:
        path = ctx.path
        if path == "/internal/health":
            try:
                await self._engine.check_health()
            except EngineDead as error:
                raise errors.unavailable(f"engine dead: {error}") from None
            status = {"status": "ok", "inflight": self.inflight, "engine": self._engine.status()}
            await send_json(ctx.send, 200, status, ctx.headers)
            return
        route = ROUTES.get(path)
        if route is None:
            raise errors.route_not_found(path)
        if ctx.method != "POST":
            raise errors.method_not_allowed(ctx.method, path, ("POST",))
        if self.inflight >= self._max_ongoing:
            raise errors.overloaded("This model replica is at its concurrency limit; retry later.")
        self.inflight += 1
        try:
            if self._tracing is None:
                await self._call(route.operation, ctx)
            else:
                await self._traced(self._tracing, route.operation, ctx)
        finally:
            self.inflight -= 1

    async def _traced(self, tracing: Tracing, operation: Operation, ctx: Exchange) -> None:
        """The replica's server span, continuing the ingress's trace; the engine's spans go under it."""
        attributes = {"paddock.request_id": ctx.request_id, "gen_ai.request.model": self._engine.model_id}
        span = tracing.server_span(f"replica {operation}", tracing.extract(forwarded_headers(ctx.scope)), attributes)
        status = 0
        send = ctx.send

        async def observed(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        ctx.send, ctx.forwarded = observed, tracing.inject(span)
        try:
            await self._call(operation, ctx)
        except errors.APIError as error:
            status = error.status
            raise
        finally:
            finish_span(span, status or 499, {})

    async def _call(self, operation: Operation, ctx: Exchange) -> None:
        body = json_object(await read_body(ctx.scope, ctx.receive, self._max_body_bytes))
        cap = ctx.header(MAX_PROMPT_TOKENS_HEADER.encode())
        limit = int(cap) if cap and cap.isdigit() else None
        special = ctx.header(SPECIAL_TOKENS_HEADER.encode()) == "allow"
        call = CallContext(ctx.request_id, ctx.forwarded, max_prompt_tokens=limit, special_tokens=special)
        result = await until_disconnect(self._engine.call(operation, body, call), ctx.receive)
        if isinstance(result, JSONResult):
            await send_bytes(ctx.send, result.status, result.body, headers=ctx.headers)
        elif isinstance(result, StreamResult):
            await self._stream(result, ctx)

    async def _stream(self, result: StreamResult, ctx: Exchange) -> None:
        send = ctx.send
        start = {
            "type": "http.response.start",
            "status": result.status,
            "headers": [(b"content-type", SSE_CONTENT_TYPE), *encode_headers([*ctx.headers, *result.headers.items()])],
        }
        await send(start)

        async def pump() -> None:
            async for chunk in result.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        try:
            await until_disconnect(pump(), ctx.receive)
        finally:
            aclose = getattr(result.events, "aclose", None)
            if aclose is not None:
                await aclose()  # closes vLLM's generator: the engine aborts the request
