"""Running an ASGI app on uvicorn inside a Ray Serve replica's event loop.

Every server Paddock runs (the API, admin, metrics and replica ports) goes through
:func:`start`, so every one has the front door's limits (``door.py``) and none trusts
forwarded headers.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Literal

import uvicorn

from service.config.settings import DEFAULT_DOOR, DoorLimits
from service.serve.door import BodyDeadline, door_protocol


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket (SO_REUSEPORT lets ingress replicas share a port on one node)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on sockets that name it.
    # Without it, every response after the first on a keep-alive connection waited ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start(
    app: Any,
    sock: socket.socket,
    lifespan: Literal["auto", "on", "off"] = "off",
    limits: DoorLimits = DEFAULT_DOOR,
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Start serving ``app`` on ``sock`` in the running loop, behind the front door's ``limits``; return once it
    accepts.

    ``proxy_headers=False``: uvicorn would otherwise rewrite the client address from ``X-Forwarded-For`` for any
    peer in ``FORWARDED_ALLOW_IPS`` (loopback by default), letting a local client choose its identity.
    """
    config = uvicorn.Config(
        BodyDeadline(app, limits.body_timeout_s),
        http=door_protocol(limits),
        ws="none",
        proxy_headers=False,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=75,
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("HTTP server exited during start-up")
        await asyncio.sleep(0.02)
    return server, task


async def stop(server: uvicorn.Server, task: asyncio.Task[None], timeout_s: float = 10.0) -> None:
    server.should_exit = True
    try:
        await asyncio.wait_for(task, timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
