"""The metrics port: ``GET /metrics`` (Prometheus text format) and ``GET /health``.

Never the public API port: metrics carry tenant ids. Figures that need the
shared store (tenant budget use) are refreshed at most every
``refresh_interval_s``, whatever the scrape rate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from service.api.asgi import REQUEST_ID_HEADER, Receive, Scope, Send, answer_errors, request_id, send_bytes, send_json
from service.observability.metrics import ServiceMetrics
from service.protocol import errors

TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


class MetricsApp:
    def __init__(
        self,
        metrics: ServiceMetrics,
        refresh: Callable[[], Awaitable[None]] | None = None,
        refresh_interval_s: float = 10.0,
    ) -> None:
        self._metrics = metrics
        self._refresh = refresh
        self._interval = refresh_interval_s
        self._refreshed = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(REQUEST_ID_HEADER, request_id(scope))]
        await answer_errors(self._dispatch(scope, send, headers), send, headers)

    async def _dispatch(self, scope: Scope, send: Send, headers: list[tuple[str, str]]) -> None:
        path, method = scope["path"], scope["method"]
        if path not in ("/metrics", "/health"):
            raise errors.route_not_found(path)
        if method not in errors.READ_METHODS:
            raise errors.method_not_allowed(method, path, errors.READ_METHODS)
        if path == "/health":
            await send_json(send, 200, {"status": "ok"}, headers)
            return
        if self._refresh is not None and time.monotonic() - self._refreshed >= self._interval:
            self._refreshed = time.monotonic()
            await self._refresh()
        await send_bytes(send, 200, self._metrics.exposition(), TEXT_FORMAT, headers)
