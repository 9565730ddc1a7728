"""Choosing a replica of a model and forwarding one request to it, with retries.

The replica is chosen by the model's ``routing`` (``service.api.routing``): by prompt prefix,
bounded by load, or least loaded. A replica that cannot be reached before it answered is reported to the
directory and another one is tried (up to three); a model with no replica
ready is woken (scale from zero) within the ingress's wake timeout. From the
moment forwarding starts until the answer is relayed — while a model wakes,
while the replica works on a non-streamed answer, while a stream is relayed —
the client leaving, or the request's ``stop`` future (a governance kill)
completing, ends it: the upstream request is cancelled (its connection closed,
so the replica aborts the engine request) and the request's owner releases
what it holds. One task watches the client for the whole of it (``_Watch``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from service.api.asgi import Receive, until_disconnect, wait_disconnect
from service.api.context import Exchange
from service.api.routing import pick, pick_for_prefix, prefix_key
from service.api.upstream import Endpoint, RelayState, Upstream, UpstreamUnreachable, read_error, relay
from service.config.schema import ModelConfig
from service.protocol import errors
from service.protocol.errors import Disconnected
from service.protocol.routes import ROUTES

log = logging.getLogger(__name__)


class Directory(Protocol):
    """Where the ingress finds the replicas of each model."""

    @property
    def ready(self) -> bool: ...

    def endpoints(self, model_id: str) -> Sequence[Endpoint]: ...

    async def wake(self, model_id: str, timeout_s: float) -> Sequence[Endpoint]: ...

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None: ...


def routing_key(model: ModelConfig, path: str, request: Mapping[str, Any] | None) -> int | None:
    """The request's prefix key when ``model`` routes by prefix (``service.api.routing``); ``None``: least loaded."""
    if request is None or model.routing_policy != "prefix":
        return None
    route = ROUTES.get(path)
    return prefix_key(route.operation, request) if route is not None else None


class _Watch:
    """One future, ``ended``, that completes when the request must end early: with what ``stop`` holds (a kill's
    refusal) or with :class:`Disconnected` when the client leaves. The work of each stage is awaited with
    ``until_disconnect(work, None, ended)``: one watcher task for the whole forward, not one per stage."""

    __slots__ = ("ended", "_task", "_stop")

    def __init__(self, receive: Receive, stop: asyncio.Future[BaseException] | None) -> None:
        loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[BaseException] = loop.create_future()
        self._stop = stop
        self._task = loop.create_task(self._client(receive))
        if stop is not None:
            stop.add_done_callback(self._stopped)

    async def _client(self, receive: Receive) -> None:
        try:
            await wait_disconnect(receive)
        except Exception:  # noqa: BLE001 - a broken receive is a client gone
            log.debug("receive failed while watching for a disconnect", exc_info=True)
        if not self.ended.done():
            self.ended.set_result(Disconnected())

    def _stopped(self, stop: asyncio.Future[BaseException]) -> None:
        if not self.ended.done() and not stop.cancelled():
            self.ended.set_result(stop.result())

    def close(self) -> None:
        self._task.cancel()
        if self._stop is not None:
            self._stop.remove_done_callback(self._stopped)


class Forwarder:
    """Sends requests to model replicas and relays their answers."""

    def __init__(self, directory: Directory, upstream: Upstream, wake_timeout_s: float) -> None:
        self.directory = directory
        self.upstream = upstream
        self._wake_timeout_s = wake_timeout_s

    async def _endpoints(self, model: ModelConfig, ended: asyncio.Future[BaseException]) -> Sequence[Endpoint]:
        endpoints = self.directory.endpoints(model.id)
        if endpoints:
            return endpoints
        timeout = self._wake_timeout_s
        try:
            wake = asyncio.wait_for(self.directory.wake(model.id, timeout), timeout)
            endpoints = await until_disconnect(wake, None, ended)
        except TimeoutError:
            endpoints = ()
        if not endpoints:
            raise errors.unavailable(f"The model `{model.id}` has no replica ready; retry later.")
        return endpoints

    async def forward(
        self,
        ctx: Exchange,
        model: ModelConfig,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        state: RelayState,
        stop: asyncio.Future[BaseException] | None = None,
        *,
        request: Mapping[str, Any] | None = None,
    ) -> None:
        """Forward ``ctx``'s request to a replica of ``model`` and relay its answer (errors as ``APIError``).

        ``state.sent`` tells the request's owner whether a replica had the request (for what to charge).
        ``request`` is the parsed body, read only to route by prompt prefix (``model.routing_policy``).
        """
        key = routing_key(model, ctx.path, request)
        watch = _Watch(ctx.receive, stop)
        try:
            await self._attempts(ctx, model, body, headers, state, watch.ended, key)
        finally:
            watch.close()

    async def _attempts(
        self,
        ctx: Exchange,
        model: ModelConfig,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        state: RelayState,
        ended: asyncio.Future[BaseException],
        key: int | None = None,
    ) -> None:
        tried: set[str] = set()
        for _ in range(3):
            candidates = [e for e in await self._endpoints(model, ended) if e.replica_id not in tried]
            if not candidates:
                break
            endpoint = pick(candidates) if key is None else pick_for_prefix(key, candidates)
            endpoint.inflight += 1
            state.sent, state.artifact = True, endpoint.artifact
            try:
                # the client leaving or a kill also ends the wait for the response head (a non-streamed answer)
                response = await until_disconnect(
                    self.upstream.open(endpoint, ctx.path, body, ctx.forwarded), None, ended
                )
                if response.status >= 400:
                    state.sent = response.status != 503  # 503: the replica refused it unprocessed (at capacity)
                    raise await read_error(response)
                await relay(response, None, ctx.send, headers, state, ended)
                return
            except UpstreamUnreachable as error:
                state.sent = False
                log.warning("replica %s of %s unreachable: %s", endpoint.replica_id, model.id, error)
                tried.add(endpoint.replica_id)
                self.directory.report_unreachable(model.id, endpoint)
            finally:
                endpoint.inflight -= 1
        raise errors.unavailable(f"No replica of `{model.id}` could be reached; retry later.")
