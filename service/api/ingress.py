"""Paddock's public ingress: one OpenAI base URL for every model.

It reads the request body once, routes by its ``model`` field (ids and
aliases), and forwards to the least-loaded replica of that model over one
HTTP hop. Replicas come from a :class:`Directory` (the serve layer keeps it
current). This module knows nothing of Ray or vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol

from service.api import errors
from service.api.asgi import (
    REQUEST_ID_HEADER,
    Receive,
    Scope,
    Send,
    answer_errors,
    header,
    json_object,
    read_body,
    request_id,
    send_json,
)
from service.api.upstream import FORWARDED_HEADERS, Endpoint, Upstream, UpstreamUnreachable, read_error, relay
from service.config.schema import ModelConfig, ServiceConfig

log = logging.getLogger(__name__)

# Governed API routes and the model task each one needs.
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

    def __init__(self, config: ServiceConfig, directory: Directory, upstream: Upstream) -> None:
        self._config = config
        self._names = config.model_by_name()
        self._directory = directory
        self._upstream = upstream
        self._created = int(time.time())
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
        await answer_errors(self._dispatch(scope, receive, send, rid, response_headers), send, response_headers)

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
        if path in API_ROUTES:
            if method != "POST":
                raise errors.method_not_allowed(method, path)
            await self._proxy(scope, receive, send, rid, headers)
        elif path in ("/health", "/ready", "/v1/models") or path.startswith("/v1/models/"):
            if method not in ("GET", "HEAD"):
                raise errors.method_not_allowed(method, path)
            await self._get(path, send, headers)
        else:
            raise errors.route_not_found(path)

    async def _get(self, path: str, send: Send, headers: list[tuple[str, str]]) -> None:
        if path == "/health":
            await send_json(send, 200, {"status": "ok"}, headers)
        elif path == "/ready":
            if self.draining or not self._directory.ready:
                raise errors.unavailable("Paddock is not ready to accept traffic.")
            await send_json(send, 200, {"status": "ready"}, headers)
        elif path == "/v1/models":
            data = [self._model_card(model) for model in self._config.models]
            await send_json(send, 200, {"object": "list", "data": data}, headers)
        else:
            model = self._names.get(path.removeprefix("/v1/models/"))
            if model is None:
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

    def _parse(self, body: bytes, path: str) -> tuple[dict[str, object], ModelConfig]:
        request = json_object(body)
        name = request.get("model")
        if not isinstance(name, str) or not name:
            raise errors.invalid_request("`model` is required and must be a string.", param="model")
        model = self._names.get(name)
        if model is None:
            raise errors.model_not_found(name)
        if API_ROUTES[path] != model.task:
            raise errors.invalid_request(
                f"The model `{name}` does not support {path}.", param="model", code="model_not_supported"
            )
        return request, model

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, rid: str, headers: list[tuple[str, str]]
    ) -> None:
        if self.draining:
            raise errors.unavailable("Paddock is shutting down; retry on another instance.")
        body = await read_body(receive, int(self._config.ingress.max_body_bytes))
        path = scope["path"]
        _, model = self._parse(body, path)
        forwarded = {REQUEST_ID_HEADER: rid}
        for name in FORWARDED_HEADERS:
            value = header(scope, name)
            if value is not None:
                forwarded[name.decode()] = value
        self._inflight += 1
        try:
            await self._forward(model, path, body, forwarded, receive, send, headers)
        finally:
            self._inflight -= 1

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
                await relay(response, receive, send, headers)
                return
            except UpstreamUnreachable as error:
                log.warning("replica %s of %s unreachable: %s", endpoint.replica_id, model.id, error)
                tried.add(endpoint.replica_id)
                self._directory.report_unreachable(model.id, endpoint)
            finally:
                endpoint.inflight -= 1
        raise errors.unavailable(f"No replica of `{model.id}` could be reached; retry later.")
