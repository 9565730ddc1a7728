"""Choosing a replica of a model and forwarding one request to it, with retries.

A replica that cannot be reached before it answered is reported to the
directory and another one is tried (up to three); a model with no replica
ready is woken (scale from zero) within the ingress's wake timeout. From the
moment the request is sent until its answer is relayed, the client leaving —
or the request's ``stop`` future (a governance kill) completing — ends it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from typing import Protocol

from service.api.asgi import until_disconnect
from service.api.context import Exchange
from service.api.upstream import Endpoint, RelayState, Upstream, UpstreamUnreachable, read_error, relay
from service.config.schema import ModelConfig
from service.protocol import errors

log = logging.getLogger(__name__)


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


class Forwarder:
    """Sends requests to model replicas and relays their answers."""

    def __init__(self, directory: Directory, upstream: Upstream, wake_timeout_s: float) -> None:
        self.directory = directory
        self.upstream = upstream
        self._wake_timeout_s = wake_timeout_s

    async def _endpoints(
        self, model: ModelConfig, ctx: Exchange, stop: asyncio.Future[BaseException] | None
    ) -> Sequence[Endpoint]:
        endpoints = self.directory.endpoints(model.id)
        if endpoints:
            return endpoints
        timeout = self._wake_timeout_s
        try:
            wake = asyncio.wait_for(self.directory.wake(model.id, timeout), timeout)
            endpoints = await until_disconnect(wake, ctx.receive, stop)
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
    ) -> None:
        """Forward ``ctx``'s request to a replica of ``model`` and relay its answer (errors as ``APIError``)."""
        tried: set[str] = set()
        for _ in range(3):
            candidates = [e for e in await self._endpoints(model, ctx, stop) if e.replica_id not in tried]
            if not candidates:
                break
            endpoint = pick(candidates)
            endpoint.inflight += 1
            try:
                sent = self.upstream.open(endpoint, ctx.path, body, ctx.forwarded)
                # a kill also ends the wait for the response head (the client leaving is seen by the relay)
                response = await sent if stop is None else await until_disconnect(sent, None, stop)
                if response.status >= 400:
                    raise await read_error(response)
                await relay(response, ctx.receive, ctx.send, headers, state, stop)
                return
            except UpstreamUnreachable as error:
                log.warning("replica %s of %s unreachable: %s", endpoint.replica_id, model.id, error)
                tried.add(endpoint.replica_id)
                self.directory.report_unreachable(model.id, endpoint)
            finally:
                endpoint.inflight -= 1
        raise errors.unavailable(f"No replica of `{model.id}` could be reached; retry later.")
