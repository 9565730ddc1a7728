"""Paddock's public ingress: one OpenAI (and Anthropic) base URL for every model.

It routes: reads the request body once, resolves its ``model`` field (ids and
aliases) and forwards it to a replica of that model over one HTTP hop
(``forward.py``). It relays: the replica's answer goes back chunk by chunk,
through the stream hooks of whoever owns the request. It maps errors: every
failure leaves in OpenAI's shape (``asgi.answer_errors``). Governance owns
each governed request from admission to settlement (``service.governance.
lifecycle``); this module only hands it the request and relays. It knows
nothing of Ray or vLLM.

It is the one place that words errors by dialect: on a route of Anthropic's
dialect (``/v1/messages``) every error, refusal and in-band stream error is
turned into Anthropic's shape (``errors.in_dialect``), and the key may come as
``x-api-key``. Everything below it speaks OpenAI's errors.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from service.api.asgi import (
    REQUEST_ID_HEADER,
    Receive,
    Scope,
    Send,
    answer_errors,
    header,
    read_body,
    request_id,
    send_bytes,
    send_json,
    sole_header,
)
from service.api.context import RequestContext
from service.api.forward import Directory, Forwarder
from service.api.upstream import (
    MAX_PROMPT_TOKENS_HEADER,
    SPECIAL_TOKENS_HEADER,
    RelayState,
    Upstream,
    end_early,
    forwarded_headers,
)
from service.config.schema import ModelConfig, ServiceConfig
from service.governance.governor import Governor
from service.governance.keys import Principal
from service.governance.lifecycle import Intake, Ticket
from service.governance.usage import UsageTap
from service.observability.logs import CURRENT, trace_id_of
from service.observability.metrics import ServiceMetrics
from service.observability.requests import CLIENT_CLOSED, RequestMetrics, observe_tap
from service.observability.tracing import Tracing, end_request_span, request_attributes
from service.protocol import errors
from service.protocol.body import json_object
from service.protocol.openapi import api_document
from service.protocol.routes import HEALTH, MODELS, OPENAPI, PROBES, RAY_PROXY_HEALTH, READY, ROUTES, Dialect

log = logging.getLogger(__name__)
_GET_ROUTES = (*PROBES, MODELS)


class IngressApp:
    """The ASGI application behind the public port."""

    def __init__(
        self,
        config: ServiceConfig,
        directory: Directory,
        upstream: Upstream,
        governor: Governor | None = None,
        trusted_proxies: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        metrics: ServiceMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._names = config.model_by_name()
        self._directory = directory
        self._upstream = upstream
        self._forwarder = Forwarder(directory, upstream, config.ingress.request_timeout_s)
        self._governor = governor
        self._trusted = [ipaddress.ip_network(net, strict=False) for net in trusted_proxies]  # PADDOCK_TRUSTED_PROXIES
        self._created = int(time.time())
        self._document = json.dumps(api_document()).encode()  # GET /openapi.json
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
        if scope["path"] in ROUTES:
            await self._api(scope, receive, send, rid, response_headers)
        else:
            work = self._dispatch(scope, send, rid, response_headers)
            if scope["path"].startswith("/v1/messages/"):  # an Anthropic route Paddock does not serve
                work = _in_dialect(work, "anthropic")
            await answer_errors(work, send, response_headers)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the plain GET routes -------------------------------------------------

    async def _dispatch(self, scope: Scope, send: Send, rid: str, headers: list[tuple[str, str]]) -> None:
        path, method = scope["path"], scope["method"]
        if path not in _GET_ROUTES and not path.startswith(f"{MODELS}/"):
            raise errors.route_not_found(path)
        readable = method in errors.READ_METHODS
        if self._governor is None or (readable and not path.startswith("/v1/")):  # the probes: no key, no record
            if not readable:
                raise errors.method_not_allowed(method, path, errors.READ_METHODS)
            await self._get(path, send, headers, None)
            return
        async with self._governor.intake(rid, path, self.client_address(scope)) as intake:  # refusals on the record
            if not readable:
                raise errors.method_not_allowed(method, path, errors.READ_METHODS)
            principal = await intake.authenticate(credential(scope, "openai"))
            await self._get(path, send, headers, principal)

    async def _get(self, path: str, send: Send, headers: list[tuple[str, str]], principal: Principal | None) -> None:
        allowed = self._governor.allowed(principal) if self._governor and principal else None
        if path == HEALTH:
            await send_json(send, 200, {"status": "ok"}, headers)
        elif path == OPENAPI:
            await send_bytes(send, 200, self._document, headers=headers)
        elif path in (READY, RAY_PROXY_HEALTH):
            why = self._not_ready(every_model=path == READY)
            if why:
                raise errors.unavailable(f"Paddock is not ready to accept traffic: {why}.")
            if path == RAY_PROXY_HEALTH:  # answered like Ray Serve's proxy, for KubeRay's Serve-aware probes
                await send_bytes(send, 200, b"success", b"text/plain; charset=utf-8", headers)
            else:
                await send_json(send, 200, {"status": "ready"}, headers)
        elif path == MODELS:
            data = [self._model_card(m) for m in self._config.models if allowed is None or m.id in allowed]
            await send_json(send, 200, {"object": "list", "data": data}, headers)
        else:
            name = path.removeprefix(f"{MODELS}/")
            model = self._names.get(name)
            if model is None or (allowed is not None and model.id not in allowed):
                raise errors.model_not_found(name)
            await send_json(send, 200, self._model_card(model), headers)

    def _not_ready(self, every_model: bool) -> str:
        """Why this ingress should get no traffic ("": it should).

        ``/ready`` (a standalone pod's probes, ``paddock serve``'s start) also waits for a serving replica of
        every model that keeps one (``min_replicas`` >= 1), so a pod in a rolling update gets traffic only
        once its models have loaded. ``/-/healthz`` answers as Ray Serve's proxy does, for the proxy alone:
        KubeRay already waits for every deployment before it routes to a RayService, and a model that lost
        its replicas must not take the other models' routes out of the Service.
        """
        if self.draining:
            return "it is shutting down"
        if not self._directory.ready:
            return "the replica registry has not answered yet"
        if every_model:
            waiting = [m.id for m in self._config.models if not m.autoscaling.scale_to_zero]
            waiting = [model_id for model_id in waiting if not self._directory.endpoints(model_id)]
            if waiting:
                return f"no replica serves {', '.join(waiting)} yet"
        return ""

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

    def client_address(self, scope: Scope) -> str:
        """The real client: the peer, unless it is a trusted proxy (``PADDOCK_TRUSTED_PROXIES``).

        ``X-Forwarded-For`` (every such header, in order) is read from the right: each hop added by a trusted
        proxy is believed, up to the first address that is not a trusted proxy, which is the client. A hop that
        is not an IP address ends the walk: the client is then the last trusted proxy that forwarded it, never
        the text it claims.
        """
        peer = (scope.get("client") or ("unknown", 0))[0]
        client = _address(peer)
        if client is None or not self._trusted or not self._is_trusted(client):
            return str(client) if client is not None else peer
        hops = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        for hop in reversed(",".join(hops).split(",") if hops else []):
            address = _address(hop)
            if address is None:
                break  # malformed (or empty): believe nothing further left
            client = address
            if not self._is_trusted(address):
                break
        return str(client)

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in self._trusted)

    # -- the API routes -------------------------------------------------------

    async def _api(self, scope: Scope, receive: Receive, send: Send, rid: str, headers: list[tuple[str, str]]) -> None:
        """An API call, observed from receipt to its last byte (metrics; the trace when on)."""
        route = ROUTES[scope["path"]]
        obs = self._observe.start(route.path, rid, trace_id_of(header(scope, b"traceparent")))
        if self._tracing is not None:
            attributes = {
                "http.request.method": scope["method"],
                "url.path": route.path,
                "gen_ai.operation.name": route.genai_operation,
                "paddock.request_id": rid,
            }
            parent = self._tracing.extract(forwarded_headers(scope))
            obs.span = self._tracing.server_span(route.genai_operation, parent, attributes)
            obs.trace_id = format(obs.span.get_span_context().trace_id, "032x")
        ctx = RequestContext(scope, receive, self._observe.watch(obs, send), rid, headers, obs=obs)
        if route.dialect == "anthropic":
            headers.append(("request-id", rid))  # where Anthropic's SDKs read it
        current = CURRENT.set(obs)  # log lines and audit records of this request carry its ids
        try:
            work = self._proxy(ctx)
            if route.dialect != "openai":
                work = _in_dialect(work, route.dialect, lambda: obs.status != 0)
            await answer_errors(work, ctx.send, headers)
        finally:
            CURRENT.reset(current)
            self._observe.finish(obs)
            if obs.span is not None:
                end_request_span(obs)

    async def _proxy(self, ctx: RequestContext) -> None:
        obs = ctx.obs
        ctx.client = self.client_address(ctx.scope)
        if self._governor is None:
            body, request, model, _ = await self._decide(ctx, None)
            await self._counted(ctx, self._ungoverned(ctx, model, body, request))
            return
        # The intake stays open until the request has ended: anything that fails after admission and before
        # _governed closed the ticket is closed by the intake's exit (lifecycle.Intake), so no path keeps a lease.
        async with self._governor.intake(ctx.request_id, ctx.path, ctx.client) as intake:
            span = self._tracing.child("governance", obs.span) if self._tracing and obs.span else None
            try:
                _, _, _, ticket = await self._decide(ctx, intake)
            finally:
                if span is not None:
                    span.set_attributes({"paddock.tenant": obs.tenant, "paddock.decision": obs.decision})
                    span.end()
            assert ticket is not None
            await self._governed(ctx, ticket)  # from here on, the ticket is closed whatever happens

    async def _counted(self, ctx: RequestContext, work: Coroutine[Any, Any, None]) -> None:
        """Forward: the request id and trace context go with it, and it counts as in flight meanwhile."""
        obs = ctx.obs
        trace = self._tracing.inject(obs.span) if self._tracing and obs.span else forwarded_headers(ctx.scope)
        ctx.forwarded = {REQUEST_ID_HEADER: ctx.request_id, **ctx.forwarded, **trace}
        inflight = self._observe.inflight(obs)
        inflight.inc()
        self._inflight += 1
        try:
            await work
        finally:
            self._inflight -= 1
            inflight.dec()

    def _door(self, ctx: RequestContext) -> None:
        """What refuses a request before its key is looked at (inside the intake, so it is on the record)."""
        if ctx.method != "POST":
            raise errors.method_not_allowed(ctx.method, ctx.path, ("POST",))
        if self.draining:
            raise errors.unavailable("Paddock is shutting down; retry on another instance.")

    async def _decide(
        self, ctx: RequestContext, intake: Intake | None
    ) -> tuple[bytes, dict[str, Any], ModelConfig, Ticket | None]:
        """The request to forward: its body, parsed body, model and (when governed, inside its ``intake``) ticket."""
        limit = int(self._config.ingress.max_body_bytes)
        self._door(ctx)
        if intake is None:
            body = await read_body(ctx.scope, ctx.receive, limit)
            request, model = self._parse(ctx, body, self._names.get)
            return body, request, model, None
        principal = await intake.authenticate(credential(ctx.scope, ROUTES[ctx.path].dialect))
        ctx.obs.tenant = principal.tenant.id
        body = await read_body(ctx.scope, ctx.receive, limit)
        request, model = self._parse(ctx, body, intake.resolve)
        ticket = await self._admit(ctx, intake, model, request)
        return body, request, model, ticket

    async def _admit(self, ctx: RequestContext, intake: Intake, model: ModelConfig, request: dict[str, Any]) -> Ticket:
        ticket = await intake.admit(model, request, finish_reasons=ctx.obs.span is not None)
        ctx.obs.decision = "admitted"
        return ticket

    def _parse(
        self, ctx: RequestContext, body: bytes, resolve: Callable[[str], ModelConfig | None]
    ) -> tuple[dict[str, Any], ModelConfig]:
        """The JSON body and the model it names (``resolve``: a name to the model, ``None`` if unknown)."""
        request = json_object(body)
        name = request.get("model")
        if not isinstance(name, str) or not name:
            raise errors.invalid_request("`model` is required and must be a string.", param="model")
        model = resolve(name)  # a model the key may not use reads exactly as unknown
        if model is None:
            raise errors.model_not_found(name)
        if ROUTES[ctx.path].task != model.task:
            raise errors.invalid_request(
                f"The model `{name}` does not support {ctx.path}.", param="model", code="model_not_supported"
            )
        ctx.obs.model = model.id
        if ctx.obs.span is not None:
            ctx.obs.span.update_name(f"{ROUTES[ctx.path].genai_operation} {name}")
            ctx.obs.span.set_attributes({"gen_ai.request.model": name, **request_attributes(request)})
        return request, model

    async def _ungoverned(self, ctx: RequestContext, model: ModelConfig, body: bytes, request: dict[str, Any]) -> None:
        dialect = ROUTES[ctx.path].dialect
        if ctx.obs.span is None:
            state = RelayState(dialect=dialect)
            await self._forwarder.forward(ctx, model, body, ctx.headers, state, request=request)
            return
        tap = UsageTap(False, finish_reasons=True)  # traced: read usage and finish reasons off the response
        state = RelayState(hooks=(tap,), dialect=dialect)
        await self._forwarder.forward(ctx, model, body, ctx.headers, state, request=request)
        observe_tap(ctx.obs, tap)

    async def _governed(self, ctx: RequestContext, ticket: Ticket) -> None:
        """Relay an admitted request under its ticket: a kill or its time limit ends it, and it is settled."""
        state = RelayState(hooks=ticket.hooks, dialect=ROUTES[ctx.path].dialect)
        failed = 0
        try:
            shaped = ticket.shaped
            if shaped.max_prompt_tokens is not None:
                ctx.forwarded[MAX_PROMPT_TOKENS_HEADER] = str(shaped.max_prompt_tokens)
            if shaped.special_tokens:
                ctx.forwarded[SPECIAL_TOKENS_HEADER] = "allow"
            body = json.dumps(shaped.body).encode()
            headers = [*ctx.headers, *ticket.headers.items()]
            work = self._forwarder.forward(ctx, ticket.model, body, headers, state, ticket.stop, request=shaped.body)
            await self._counted(ctx, ticket.run(work))
        except errors.APIError as error:
            failed = error.status  # the audit's status unless the 200 already went out
            await end_early(ctx.send, state, error)  # raises it if nothing was sent yet
        except Exception:
            failed = 500  # answered by answer_errors, as a bug
            raise
        finally:
            status = state.status or failed or CLIENT_CLOSED
            if state.cut and ticket.outcome == "ok":  # a 200 whose body the replica never finished
                ticket.outcome = "error"
            usage = await ticket.close(status, state.started, reached_engine=state.sent, artifact=state.artifact)
            if usage is not None:
                ctx.obs.usage = (usage.prompt_tokens, usage.completion_tokens)
            if ticket.tap is not None:
                ctx.obs.finish_reasons = ticket.tap.finish_reasons


def credential(scope: Scope, dialect: Dialect) -> str | None:
    """The request's key as an ``Authorization`` value: Anthropic's clients send it as ``x-api-key``.

    A credential header sent twice (``Authorization`` or ``x-api-key``, on any route) is a 400: which of the
    two a proxy or a library would read is anyone's guess, so Paddock believes neither.
    """
    authorization = sole_header(scope, b"authorization")
    api_key = sole_header(scope, b"x-api-key")
    if dialect == "anthropic" and (key := (api_key or "").strip()):
        return f"Bearer {key}"
    return authorization


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as its IPv4 one), ``None`` if it is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _in_dialect(
    work: Coroutine[Any, Any, None], dialect: Dialect, started: Callable[[], bool] = lambda: False
) -> None:
    """Run ``work``; a failure before the response started leaves worded as ``dialect`` answers it."""
    try:
        await work
    except errors.APIError as error:
        raise errors.in_dialect(error, dialect) from None
    except errors.Disconnected:
        raise
    except Exception:
        if started():
            raise  # answer_errors logs it; nothing more can be said to the client
        log.exception("unhandled error while serving a request")
        raise errors.in_dialect(errors.internal(), dialect) from None
