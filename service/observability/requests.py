"""Per-request observation at the ingress: status, duration, TTFT, inter-token latency, tokens.

One :class:`Observation` follows one API request. It wraps the ASGI ``send``
to see the response status and when each streamed chunk leaves; the ingress
fills in the model, tenant, decision and usage as it learns them, and
:meth:`RequestMetrics.finish` records everything once, at the end. Label
children are bound once per label set (a dict probe per request, not a
``labels()`` call per metric).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.observability.metrics import NO_TENANT, UNKNOWN_MODEL, ServiceMetrics
from service.protocol.routes import ROUTES

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

CLIENT_CLOSED = 499  # nginx's code for a client that left before the response started


class Observation:
    """What one request did; filled in by the ingress as it goes."""

    __slots__ = (
        "route",
        "started",
        "model",
        "tenant",
        "decision",
        "status",
        "sse",
        "first",
        "last",
        "usage",
        "span",
        "finish_reasons",
        "request_id",
        "trace_id",
    )

    def __init__(self, route: str, decision: str, request_id: str = "", trace_id: str | None = None) -> None:
        self.request_id = request_id
        self.trace_id = trace_id  # of the request's trace: ours when tracing, else the caller's traceparent
        self.route = route
        self.started = time.monotonic()
        self.model = UNKNOWN_MODEL
        self.tenant = NO_TENANT
        self.decision = decision
        self.status = 0
        self.sse = False
        self.first = 0.0  # when the first streamed chunk left
        self.last = 0.0
        self.usage: tuple[int, int] | None = None  # prompt, completion tokens
        self.span: Any = None  # the ingress span, when tracing is on
        self.finish_reasons: list[str] = []


class RequestMetrics:
    """Records finished requests into :class:`ServiceMetrics`."""

    def __init__(self, metrics: ServiceMetrics, governed: bool) -> None:
        self.metrics = metrics
        self._decision = "refused" if governed else "ungoverned"  # until admitted
        self._finished: dict[tuple[str, str, str, int, str], tuple[Any, Any]] = {}
        self._streams: dict[str, tuple[Any, Any]] = {}
        self._tokens: dict[tuple[str, str], tuple[Any, Any]] = {}

    def start(self, path: str, request_id: str = "", trace_id: str | None = None) -> Observation:
        return Observation(ROUTES[path].operation, self._decision, request_id, trace_id)

    def watch(self, obs: Observation, send: Send) -> Send:
        """``send``, noting the status and when each streamed body chunk leaves."""
        itl: Any = None

        async def observed(message: Message) -> None:
            nonlocal itl
            if message["type"] == "http.response.body":
                if obs.sse and message.get("body"):
                    now = time.monotonic()
                    if not obs.first:
                        obs.first = now
                    else:
                        if itl is None:
                            itl = self._stream_children(obs.model)[1]
                        itl.observe(now - obs.last)
                    obs.last = now
            elif message["type"] == "http.response.start":
                obs.status = message["status"]
                obs.sse = any(
                    k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"]
                )
            await send(message)

        return observed

    def _stream_children(self, model: str) -> tuple[Any, Any]:
        children = self._streams.get(model)
        if children is None:
            m = self.metrics
            children = self._streams[model] = (m.ttft.labels(model), m.itl.labels(model))
        return children

    def finish(self, obs: Observation) -> None:
        status = obs.status or CLIENT_CLOSED
        key = (obs.model, obs.tenant, obs.route, status, obs.decision)
        children = self._finished.get(key)
        if children is None:
            m = self.metrics
            children = self._finished[key] = (
                m.requests.labels(obs.model, obs.tenant, obs.route, str(status), obs.decision),
                m.duration.labels(obs.model, obs.route),
            )
        requests, duration = children
        requests.inc()
        duration.observe(time.monotonic() - obs.started)
        if obs.first:
            self._stream_children(obs.model)[0].observe(obs.first - obs.started)
        if obs.usage is not None:
            prompt, completion = self._token_children(obs.model, obs.tenant)
            prompt.inc(obs.usage[0])
            completion.inc(obs.usage[1])

    def _token_children(self, model: str, tenant: str) -> tuple[Any, Any]:
        children = self._tokens.get((model, tenant))
        if children is None:
            m = self.metrics
            children = self._tokens[model, tenant] = (
                m.tokens.labels(model, tenant, "prompt"),
                m.tokens.labels(model, tenant, "completion"),
            )
        return children

    def inflight(self, obs: Observation) -> Any:
        """The in-flight gauge child of this request's model and tenant."""
        return self.metrics.inflight.labels(obs.model, obs.tenant)


def observe_tap(obs: Observation, tap: Any) -> None:
    """Usage and finish reasons a ``UsageTap`` read off a relayed response."""
    if tap.usage is not None:
        obs.usage = (tap.usage.prompt_tokens, tap.usage.completion_tokens)
    obs.finish_reasons = tap.finish_reasons
