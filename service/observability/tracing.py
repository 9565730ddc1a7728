"""OpenTelemetry tracing: off by default, and then nothing is built and nothing is done per request.

``PADDOCK_TRACING=on`` turns it on. Where spans go is configured by the
standard variables, read by OpenTelemetry's own exporters:
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf``, the default, or
``grpc``), ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``…_HEADERS``,
``…_TIMEOUT``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and the
``OTEL_TRACES_SAMPLER`` family.

One trace per request: the ingress's server span (W3C ``traceparent``
accepted, so a caller's trace continues) → ``governance`` → the replica's
server span → vLLM's ``llm_request`` span and the engine's queue, prefill and
decode phases. Attributes follow the GenAI semantic conventions plus tenant
and request id; never prompt or completion text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.observability.metrics import paddock_version

_PROPAGATOR = TraceContextTextMapPropagator()
# request field -> span attribute (GenAI semantic conventions)
REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}


def otlp_protocol(env: Mapping[str, str]) -> str:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"


def otlp_traces_endpoint(env: Mapping[str, str]) -> str:
    """The traces endpoint the standard variables name (what vLLM's own exporter needs spelled out)."""
    protocol = otlp_protocol(env)
    explicit = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if explicit:
        return explicit
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return base or "http://localhost:4317"
    return (base or "http://localhost:4318").rstrip("/") + "/v1/traces"


def otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    """OTLP over HTTP or gRPC, as the standard variables say (the exporters read the rest themselves)."""
    protocol = otlp_protocol(env)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: Paddock supports grpc and http/protobuf")


class Tracing:
    """A tracer of one Paddock process (its own provider: nothing global)."""

    def __init__(self, exporter: SpanExporter, component: str, service_name: str = "paddock") -> None:
        # OTEL_RESOURCE_ATTRIBUTES are merged in by the SDK
        resource = Resource.create({"service.name": service_name, "paddock.component": component})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("paddock", paddock_version())

    @staticmethod
    def extract(headers: Mapping[str, str]) -> Context | None:
        """The caller's trace context (W3C ``traceparent``/``tracestate``), if it sent one."""
        return _PROPAGATOR.extract(headers) if "traceparent" in headers else None

    @staticmethod
    def inject(span: Span) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) making ``span`` the parent of the next hop."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
        return carrier

    def server_span(self, name: str, parent: Context | None, attributes: dict[str, Any]) -> Span:
        return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

    def child(self, name: str, parent: Span, attributes: dict[str, Any] | None = None) -> Span:
        return self.tracer.start_span(name, context=set_span_in_context(parent), attributes=attributes)

    def shutdown(self) -> None:
        self.provider.shutdown()


def finish_span(span: Span, status: int, attributes: dict[str, Any]) -> None:
    """End a server span with its HTTP status (5xx marks the span as an error)."""
    span.set_attribute("http.response.status_code", status)
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))
    span.end()


def request_attributes(request: Mapping[str, Any]) -> dict[str, Any]:
    """GenAI request attributes of an OpenAI request body (numbers only; never text)."""
    out: dict[str, Any] = {}
    for field, attribute in REQUEST_ATTRIBUTES.items():
        value = request.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[attribute] = value
    return out


def build_tracing(enabled: bool, env: Mapping[str, str], component: str) -> Tracing | None:
    if not enabled:
        return None
    return Tracing(otlp_exporter(env), component, env.get("OTEL_SERVICE_NAME") or "paddock")


def end_request_span(obs: Any) -> None:
    """End the ingress span of an observed request (see ``requests.Observation``)."""
    attributes: dict[str, Any] = {"paddock.tenant": obs.tenant, "paddock.decision": obs.decision}
    if obs.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = obs.usage[0]
        attributes["gen_ai.usage.output_tokens"] = obs.usage[1]
    if obs.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = obs.finish_reasons
    if obs.first:
        attributes["paddock.time_to_first_token_s"] = round(obs.first - obs.started, 6)
    finish_span(obs.span, obs.status or 499, attributes)
