"""Paddock's public ingress: one OpenAI base URL for every model.

It reads the request body once, routes by its ``model`` field (ids and
aliases), and forwards to the least-loaded replica of that model over one
HTTP hop. Replicas come from a :class:`Directory` (the serve layer keeps it
current). This module knows nothing of Ray or vLLM.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

from service.api import errors
from service.api.asgi import (
    REQUEST_ID_HEADER,
    Disconnected,
    Receive,
    Scope,
    Send,
    answer_errors,
    header,
    json_object,
    read_body,
    request_id,
    send_bytes,
    send_json,
)
from service.api.upstream import (
    MAX_PROMPT_TOKENS_HEADER,
    Endpoint,
    RelayState,
    Upstream,
    UpstreamUnreachable,
    end_early,
    forwarded_headers,
    read_error,
    relay,
)
from service.api.usage import UsageTap
from service.config.schema import ModelConfig, ServiceConfig
from service.governance.governor import Governor, Ticket
from service.governance.keys import Principal
from service.governance.refusal import Refusal
from service.governance.store.base import Usage
from service.observability.logs import CURRENT, trace_id_of
from service.observability.metrics import ServiceMetrics
from service.observability.requests import Observation, RequestMetrics, observe_tap
from service.observability.tracing import OPERATION_NAMES, Tracing, end_request_span, request_attributes

log = logging.getLogger(__name__)

# Governed API routes and the model task each one needs.
RAY_PROXY_HEALTH = "/-/healthz"
API_ROUTES = {
    "/v1/chat/completions": "generate",
    "/v1/completions": "generate",
    "/v1/responses": "generate",
    "/v1/embeddings": "embed",
}


class Directory(Protocol):
    """Where the ingress finds the replicas of each model."""

    @property
    def ready(self) -> bool: ...

    def endpoints(self, model_id: str) -> Sequence[Endpoint]: ...

    async def wake(self, model_id: str, timeout_s: float) -> Sequence[Endpoint]: ...

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None: ...


def pick(endpoints: Sequence[Endpoint]) -> Endpoint:
    """Power of two choices on this ingress's own in-flight counts."""
    if len(endpoints) == 1:
        return endpoints[0]
    first, second = random.sample(list(endpoints), 2)
    return first if first.inflight <= second.inflight else second


class IngressApp:
    """The ASGI application behind the public port."""

    def __init__(
        self,
        config: ServiceConfig,
        directory: Directory,
        upstream: Upstream,
        governor: Governor | None = None,
        trusted_proxies: Sequence[str] = (),
        metrics: ServiceMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._names = config.model_by_name()
        self._directory = directory
        self._upstream = upstream
        self._governor = governor
        self._trusted = [ipaddress.ip_network(net, strict=False) for net in trusted_proxies]
        self._created = int(time.time())
        self._observe = RequestMetrics(metrics or ServiceMetrics(), governed=governor is not None)
        self._tracing = tracing
        self._inflight = 0
        self.draining = False

    @property
    def inflight(self) -> int:
        return self._inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        rid = request_id(scope)
        response_headers = [(REQUEST_ID_HEADER, rid)]
        if scope["path"] in API_ROUTES:
            await self._api(scope, receive, send, rid, response_headers)
        else:
            await answer_errors(self._dispatch(scope, receive, send, rid, response_headers), send, response_headers)

    async def _api(self, scope: Scope, receive: Receive, send: Send, rid: str, headers: list[tuple[str, str]]) -> None:
        """An API call, observed from receipt to its last byte (metrics; the trace when on)."""
        obs = self._observe.start(scope["path"], rid, trace_id_of(header(scope, b"traceparent")))
        if self._tracing is not None:
            obs.span = self._server_span(self._tracing, scope, rid, obs)
            obs.trace_id = format(obs.span.get_span_context().trace_id, "032x")
        send = self._observe.watch(obs, send)
        current = CURRENT.set(obs)  # log lines and audit records of this request carry its ids
        try:
            await answer_errors(self._proxy(scope, receive, send, rid, headers, obs), send, headers)
        finally:
            CURRENT.reset(current)
            self._observe.finish(obs)
            if obs.span is not None:
                end_request_span(obs)

    @staticmethod
    def _server_span(tracing: Tracing, scope: Scope, rid: str, obs: Observation) -> Any:
        attributes = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "gen_ai.operation.name": OPERATION_NAMES[obs.route],
            "paddock.request_id": rid,
        }
        return tracing.server_span(OPERATION_NAMES[obs.route], tracing.extract(forwarded_headers(scope)), attributes)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, rid: str, headers: list[tuple[str, str]]
    ) -> None:
        path, method = scope["path"], scope["method"]
        if path in ("/health", "/ready", RAY_PROXY_HEALTH, "/v1/models") or path.startswith("/v1/models/"):
            if method not in ("GET", "HEAD"):
                raise errors.method_not_allowed(method, path)
            principal = None
            if path.startswith("/v1/") and self._governor is not None:
                principal = await self._authenticate(scope, rid, path, time.monotonic(), self.client_address(scope))
            await self._get(path, send, headers, principal)
        else:
            raise errors.route_not_found(path)

    async def _get(self, path: str, send: Send, headers: list[tuple[str, str]], principal: Principal | None) -> None:
        allowed = self._governor.allowed(principal) if self._governor and principal else None
        if path == "/health":
            await send_json(send, 200, {"status": "ok"}, headers)
        elif path in ("/ready", RAY_PROXY_HEALTH):
            if self.draining or not self._directory.ready:
                raise errors.unavailable("Paddock is not ready to accept traffic.")
            if path == RAY_PROXY_HEALTH:  # answered like Ray Serve's proxy, for KubeRay's Serve-aware probes
                await send_bytes(send, 200, b"success", b"text/plain; charset=utf-8", headers)
            else:
                await send_json(send, 200, {"status": "ready"}, headers)
        elif path == "/v1/models":
            data = [self._model_card(m) for m in self._config.models if allowed is None or m.id in allowed]
            await send_json(send, 200, {"object": "list", "data": data}, headers)
        else:
            model = self._names.get(path.removeprefix("/v1/models/"))
            if model is None or (allowed is not None and model.id not in allowed):
                raise errors.model_not_found(path.removeprefix("/v1/models/"))
            await send_json(send, 200, self._model_card(model), headers)

    def _model_card(self, model: ModelConfig) -> dict[str, object]:
        replicas = len(self._directory.endpoints(model.id))
        if replicas:
            state = "ready"
        elif model.autoscaling.scale_to_zero:
            state = "scaled_to_zero"
        else:
            state = "starting"
        return {
            "id": model.id,
            "object": "model",
            "created": self._created,
            "owned_by": "paddock",
            "aliases": list(model.aliases),
            "task": model.task,
            "status": {"state": state, "replicas": replicas},
        }

    def _parse(self, body: bytes, path: str, principal: Principal | None) -> tuple[dict[str, Any], ModelConfig]:
        request = json_object(body)
        name = request.get("model")
        if not isinstance(name, str) or not name:
            raise errors.invalid_request("`model` is required and must be a string.", param="model")
        if principal is not None and self._governor is not None:
            model = self._governor.resolve(principal, name)  # not allowed reads exactly as unknown
        else:
            model = self._names.get(name)
        if model is None:
            raise errors.model_not_found(name)
        if API_ROUTES[path] != model.task:
            raise errors.invalid_request(
                f"The model `{name}` does not support {path}.", param="model", code="model_not_supported"
            )
        return request, model

    def client_address(self, scope: Scope) -> str:
        """The real client: ``X-Forwarded-For`` is believed only from trusted proxies."""
        peer = (scope.get("client") or ("unknown", 0))[0]
        forwarded = header(scope, b"x-forwarded-for")
        if not forwarded or not self._trusted:
            return peer
        for hop in [peer, *reversed([h.strip() for h in forwarded.split(",")])]:
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                return hop[:64]
            if not any(address in net for net in self._trusted):
                return hop
        return peer

    async def _authenticate(self, scope: Scope, rid: str, route: str, started: float, client: str) -> Principal:
        assert self._governor is not None
        try:
            return await self._governor.authenticate(header(scope, b"authorization"), client)
        except Refusal as refusal:
            raise self._refused(refusal, rid, route, client, started) from None

    def _refused(
        self, refusal: Refusal | errors.APIError, rid: str, route: str, client: str, started: float, **who: Any
    ) -> errors.APIError:
        """Audit a refusal (any request refused before it was forwarded) and return its error."""
        if isinstance(refusal, errors.APIError):
            error, reason, detail = refusal, refusal.code or refusal.type, None
        else:
            error, reason, detail = errors.from_refusal(refusal), refusal.reason, refusal.detail
        if self._governor is not None:
            self._governor.trail.refused(
                request_id=rid,
                route=route,
                client=client,
                reason=reason,
                detail=detail,
                status=error.status,
                started=started,
                **who,
            )
        return error

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, rid: str, headers: list[tuple[str, str]], obs: Observation
    ) -> None:
        if scope["method"] != "POST":
            raise errors.method_not_allowed(scope["method"], scope["path"])
        if self.draining:
            raise errors.unavailable("Paddock is shutting down; retry on another instance.")
        span = self._tracing.child("governance", obs.span) if obs.span is not None and self._governor else None
        try:
            body, model, ticket = await self._decide(scope, receive, rid, obs)
        finally:
            if span is not None:
                span.set_attributes({"paddock.tenant": obs.tenant, "paddock.decision": obs.decision})
                span.end()
        trace = self._tracing.inject(obs.span) if obs.span is not None else forwarded_headers(scope)  # type: ignore[union-attr]
        forwarded = {REQUEST_ID_HEADER: rid, **trace}
        inflight = self._observe.inflight(obs)
        inflight.inc()
        self._inflight += 1
        try:
            if ticket is not None:
                await self._governed(ticket, forwarded, receive, send, headers, obs)
            elif obs.span is None:
                await self._forward(model, scope["path"], body, forwarded, receive, send, headers)
            else:  # ungoverned but traced: read usage and finish reasons off the response
                state = RelayState(tap=UsageTap(False, finish_reasons=True))
                await self._forward(model, scope["path"], body, forwarded, receive, send, headers, state)
                observe_tap(obs, state.tap)
        finally:
            self._inflight -= 1
            inflight.dec()

    async def _decide(
        self, scope: Scope, receive: Receive, rid: str, obs: Observation
    ) -> tuple[bytes, ModelConfig, Ticket | None]:
        """Authenticate, read and parse the body, and admit: the request to forward, or an error (audited)."""
        path, started = scope["path"], time.monotonic()
        client = self.client_address(scope)
        principal = await self._authenticate(scope, rid, path, started, client) if self._governor else None
        if principal is not None:
            obs.tenant = principal.tenant.id
        model: ModelConfig | None = None
        try:
            body = await read_body(receive, int(self._config.ingress.max_body_bytes))
            request, model = self._parse(body, path, principal)
            obs.model = model.id
            if obs.span is not None:
                obs.span.update_name(f"{OPERATION_NAMES[obs.route]} {request['model']}")
                obs.span.set_attributes({"gen_ai.request.model": request["model"], **request_attributes(request)})
            ticket = await self._admit(principal, model, path, request, rid, client)
        except (Refusal, errors.APIError) as refusal:
            name = model.id if model else None
            raise self._refused(refusal, rid, path, client, started, principal=principal, model=name) from None
        if ticket is not None:
            obs.decision = "admitted"
        return body, model, ticket

    async def _admit(
        self, principal: Principal | None, model: ModelConfig, path: str, request: dict[str, Any], rid: str, client: str
    ) -> Ticket | None:
        if self._governor is None or principal is None:
            return None
        ticket = await self._governor.admit(principal, model, path, request, rid, client)
        self._governor.trail.admitted(ticket)  # the decision is on record before anything is forwarded
        return ticket

    async def _governed(
        self,
        ticket: Ticket,
        forwarded: dict[str, str],
        receive: Receive,
        send: Send,
        headers: list[tuple[str, str]],
        obs: Observation,
    ) -> None:
        assert self._governor is not None
        shaped = ticket.shaped
        if shaped.max_prompt_tokens is not None:
            forwarded[MAX_PROMPT_TOKENS_HEADER] = str(shaped.max_prompt_tokens)
        keep_text = ticket.principal.tenant.audit.include_text
        tap = UsageTap(False, shaped.stream and not shaped.include_usage, keep_text, obs.span is not None)
        state = RelayState(tap=tap)
        body = json.dumps(shaped.body).encode()
        outcome, status = "ok", 0
        try:
            async with asyncio.timeout(shaped.timeout_s):
                await self._forward(
                    ticket.model,
                    ticket.route,
                    body,
                    forwarded,
                    receive,
                    send,
                    [*headers, *ticket.headers.items()],
                    state,
                )
        except asyncio.CancelledError:
            if ticket.killed is None:
                outcome = "cancelled"
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            error = errors.from_refusal(Refusal("killed", ticket.killed))
            outcome, status = "killed", error.status  # the audit's status unless the 200 already went out
            await self._cut_short(send, state, error)
        except TimeoutError:
            error = errors.timeout("The request exceeded its time limit.")
            outcome, status = "timeout", error.status
            await self._cut_short(send, state, error)
        except errors.APIError as error:
            outcome, status = "error", error.status
            raise
        except Disconnected:
            outcome = "client_disconnected"
            raise
        finally:
            usage = await self._finish(ticket, state, status, outcome)
            if usage is not None:
                obs.usage = (usage.prompt_tokens, usage.completion_tokens)
            obs.finish_reasons = tap.finish_reasons

    async def _cut_short(self, send: Send, state: RelayState, error: errors.APIError) -> None:
        if not state.started:
            raise error
        await end_early(send, state, error)

    async def _finish(self, ticket: Ticket, state: RelayState, status: int, outcome: str) -> Usage | None:
        assert self._governor is not None
        tap = state.tap
        usage = tap.usage if tap else None
        if usage is None and not state.started:
            usage = Usage(0, 0)  # refused upstream before generating anything
        status = state.status or status or 499
        await self._governor.settle(ticket, usage)
        completion = tap.completion() if tap and ticket.principal.tenant.audit.include_text else None
        self._governor.trail.completed(ticket, status=status, usage=usage, outcome=outcome, completion=completion)
        return usage

    async def _endpoints(self, model: ModelConfig) -> Sequence[Endpoint]:
        endpoints = self._directory.endpoints(model.id)
        if endpoints:
            return endpoints
        timeout = self._config.ingress.request_timeout_s
        try:
            endpoints = await asyncio.wait_for(self._directory.wake(model.id, timeout), timeout)
        except TimeoutError:
            endpoints = ()
        if not endpoints:
            raise errors.unavailable(f"The model `{model.id}` has no replica ready; retry later.")
        return endpoints

    async def _forward(
        self,
        model: ModelConfig,
        path: str,
        body: bytes,
        forwarded: dict[str, str],
        receive: Receive,
        send: Send,
        headers: list[tuple[str, str]],
        state: RelayState | None = None,
    ) -> None:
        tried: set[str] = set()
        for _ in range(3):
            candidates = [e for e in await self._endpoints(model) if e.replica_id not in tried]
            if not candidates:
                break
            endpoint = pick(candidates)
            endpoint.inflight += 1
            try:
                response = await self._upstream.open(endpoint, path, body, forwarded)
                if response.status >= 400:
                    raise await read_error(response)
                await relay(response, receive, send, headers, state)
                return
            except UpstreamUnreachable as error:
                log.warning("replica %s of %s unreachable: %s", endpoint.replica_id, model.id, error)
                tried.add(endpoint.replica_id)
                self._directory.report_unreachable(model.id, endpoint)
            finally:
                endpoint.inflight -= 1
        raise errors.unavailable(f"No replica of `{model.id}` could be reached; retry later.")
