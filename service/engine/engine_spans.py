"""The engine's queue, prefill and decode phases as spans (tracing on only).

vLLM records one ``llm_request`` span per request, with the phase durations
as attributes. These spans put the same phases on the trace's time line, as
siblings of ``llm_request`` under the replica's span, from the request's own
timing stats: arrival (wall clock), time to first token, and the engine's
queue, prefill and decode durations. They go through the process's global
tracer provider, which vLLM installs when tracing is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_NS = 1_000_000_000


def phases(stats: Any) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` in wall-clock seconds for queue, prefill and decode."""
    first_token = stats.arrival_time + stats.first_token_latency
    prefill_s = max(stats.first_token_ts - stats.scheduled_ts, 0.0)
    queued_s = max(stats.scheduled_ts - stats.queued_ts, 0.0)
    decode_s = max(stats.last_token_ts - stats.first_token_ts, 0.0)
    prefill_start = first_token - prefill_s
    return [
        ("engine.queue", prefill_start - queued_s, prefill_start),
        ("engine.prefill", prefill_start, first_token),
        ("engine.decode", first_token, first_token + decode_s),
    ]


def record_phases(trace_headers: Mapping[str, str] | None, stats: Any, request_id: str) -> None:
    """Emit the phase spans of one finished request (no-op without a trace context)."""
    if not trace_headers or stats is None or not stats.first_token_ts:
        return
    parent = _PROPAGATOR.extract(trace_headers)
    tracer = trace.get_tracer("paddock.engine")
    for name, start, end in phases(stats):
        span = tracer.start_span(name, context=parent, start_time=int(start * _NS))
        span.set_attribute("gen_ai.request.id", request_id)
        span.end(end_time=int(end * _NS))


def wrap_do_tracing(processor: Any) -> None:
    """Add the phase spans to a vLLM ``OutputProcessor``'s per-request tracing."""
    original = processor.do_tracing

    def do_tracing(engine_core_output: Any, req_state: Any, iteration_stats: Any) -> None:
        original(engine_core_output, req_state, iteration_stats)
        record_phases(engine_core_output.trace_headers, req_state.stats, req_state.external_req_id)

    processor.do_tracing = do_tracing
