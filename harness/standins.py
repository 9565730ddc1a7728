"""Stand-ins for the ingress's collaborators, shared by the ingress tests and ``bench.ingress_overhead``.

A replica directory with one always-ready replica, ASGI apps served on loopback by the service's
own uvicorn runner, and aiohttp handlers served on loopback (stand-in model replicas).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from harness.ports import free_port
from service.api.upstream import Endpoint
from service.serve import http


class OneReplicaDirectory:
    """Every model has one replica, always ready."""

    ready = True

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def endpoints(self, model_id: str) -> list[Endpoint]:
        return [self.endpoint]

    async def wake(self, model_id: str, timeout_s: float) -> list[Endpoint]:
        return [self.endpoint]

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None:
        pass


class Served:
    """An ASGI app served on a loopback port by the service's own uvicorn runner (``service.serve.http``)."""

    def __init__(self, url: str, server: Any, task: Any) -> None:
        self.url, self._server, self._task = url, server, task

    async def stop(self) -> None:
        await http.stop(self._server, self._task)


async def serve(app: Any, lifespan: str = "on") -> Served:
    sock = http.bind("127.0.0.1", 0)
    server, task = await http.start(app, sock, lifespan=lifespan)
    return Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server, task)


class ServedHandler:
    """An aiohttp handler served on a loopback port (a stand-in model replica)."""

    def __init__(self, url: str, runner: web.AppRunner) -> None:
        self.url, self._runner = url, runner

    async def stop(self) -> None:
        await self._runner.cleanup()


async def serve_handler(handler: Any, method: str = "POST", path: str = "/{tail:.*}", **runner: Any) -> ServedHandler:
    """Serve ``handler`` for ``method`` on every path (aiohttp, a free loopback port); ``runner``: AppRunner options."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    app_runner = web.AppRunner(app, **runner)
    await app_runner.setup()
    port = free_port()
    await web.TCPSite(app_runner, "127.0.0.1", port).start()
    return ServedHandler(f"http://127.0.0.1:{port}", app_runner)
