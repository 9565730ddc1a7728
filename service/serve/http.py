"""Running an ASGI app on uvicorn inside a Ray Serve replica's event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Literal

import uvicorn


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket (SO_REUSEPORT lets ingress replicas share a port on one node)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start(
    app: Any, sock: socket.socket, lifespan: Literal["auto", "on", "off"] = "off"
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Start serving ``app`` on ``sock`` in the running loop; return once it accepts."""
    config = uvicorn.Config(
        app,
        http="httptools",
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
