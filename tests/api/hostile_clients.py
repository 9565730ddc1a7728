"""Slow and stalled HTTP clients, run as a process of their own by ``test_slow_clients.py``.

``python -m tests.api.hostile_clients PORT KEY silent=45 header_drip=45 …`` opens that many connections of
each kind to the API port on loopback, prints ``ready`` once every one is open (a slow reader: once its
response has started), then keeps them as they are (dripping a byte a second where its kind drips) until
its standard input closes. Its own CPU time is not the server's: the server's event loop sees only the
connections. A slow reader's receive buffer is made small, so that its stream soon fills the socket and the
relay waits on back-pressure.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from tests.api.front_door import CHAT, request_head

KINDS = ("silent", "header_drip", "body_stall", "body_drip", "slow_reader")


async def hostile(port: int, key: str, kind: str, opened: asyncio.Event) -> None:
    """One slow client of ``kind``; it holds its connection until cancelled."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if kind == "slow_reader":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    auth = {"authorization": f"Bearer {key}"}
    try:
        if kind == "header_drip":
            writer.write(request_head("POST", "/v1/chat/completions", {"x-slow": "s" * 5000})[:20])
        elif kind in ("body_stall", "body_drip"):
            head = {**auth, "content-type": "application/json", "content-length": "100000"}
            writer.write(request_head("POST", "/v1/chat/completions", head) + b'{"model": "chat", "x": "')
        elif kind == "slow_reader":
            raw = json.dumps({**CHAT, "stream": True}).encode()
            head = {**auth, "content-type": "application/json", "content-length": str(len(raw))}
            writer.write(request_head("POST", "/v1/chat/completions", head) + raw)
            status = await reader.readuntil(b"\r\n")  # then never read again
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"slow reader answered {status!r}")
        await writer.drain()
        opened.set()
        while True:
            await asyncio.sleep(1.0)  # a byte a second
            if kind in ("header_drip", "body_drip"):
                writer.write(b"s")
    finally:
        writer.transport.abort()


async def main(port: int, key: str, counts: dict[str, int]) -> None:
    events = [asyncio.Event() for kind in counts for _ in range(counts[kind])]
    kinds = [kind for kind in counts for _ in range(counts[kind])]
    tasks = [asyncio.create_task(hostile(port, key, kind, event)) for kind, event in zip(kinds, events, strict=True)]
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    await asyncio.wait([asyncio.gather(*waits), *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done():
            raise SystemExit(f"a hostile client ended early: {task.exception()!r}")
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if any(not t.cancelled() and t.exception() for t in tasks):
        raise SystemExit("a hostile client failed while held")


if __name__ == "__main__":
    port, key, *specs = sys.argv[1:]
    wanted = {name: int(n) for name, _, n in (spec.partition("=") for spec in specs)}
    assert set(wanted) <= set(KINDS), wanted
    asyncio.run(main(int(port), key, wanted))
