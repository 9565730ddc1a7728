"""Stream hooks on the relay (service/api/upstream.py): every chunk passes through each hook in order.

A real aiohttp upstream streams SSE events split across network chunks; ``relay`` forwards them to a
recording ASGI ``send`` through two hooks, one of which holds chunks back until an event is whole.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from harness.standins import serve_handler
from service.api.upstream import RelayState, relay

PIECES = [b'data: {"a"', b':1}\n\ndata: {"b":2}\n', b"\ndata: [DO", b"NE]\n\n"]


class WholeEvents:
    """Holds back a partial event until its end arrives (as a guardrail that reads events would)."""

    def __init__(self) -> None:
        self.sse = False
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        end = data.rfind(b"\n\n") + 2
        self._pending = data[end:] if end >= 2 else data
        return data[:end] if end >= 2 else b""

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


class Recorder:
    """Sees what the hook before it let through, and tags each event it passes on."""

    def __init__(self) -> None:
        self.sse = False
        self.seen: list[bytes] = []
        self.finished = False

    def feed(self, chunk: bytes) -> bytes:
        self.seen.append(chunk)
        return chunk

    def finish(self) -> bytes:
        self.finished = True
        return b""


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for piece in PIECES:
        await response.write(piece)
        await asyncio.sleep(0.01)  # each piece travels in its own network chunk
    return response


async def relayed(hooks: tuple) -> list[bytes]:
    upstream = await serve_handler(stream, "GET")
    sent: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client never leaves
        return {}

    try:
        async with aiohttp.ClientSession() as session:
            response = await session.get(upstream.url + "/")
            state = RelayState(hooks=hooks)
            await relay(response, receive, send, [], state)
            assert state.sse and state.ended and all(hook.sse for hook in hooks)
    finally:
        await upstream.stop()
    return sent


async def test_a_later_hook_sees_only_whole_events_when_an_earlier_one_holds_back_partial_ones() -> None:
    whole, recorder = WholeEvents(), Recorder()
    sent = await relayed((whole, recorder))
    assert b"".join(sent) == b"".join(PIECES)  # nothing lost, nothing added, in order
    assert all(chunk.endswith(b"\n\n") for chunk in recorder.seen)  # the recorder never saw half an event
    assert recorder.seen[0] == b'data: {"a":1}\n\n' and recorder.finished


async def test_what_a_hook_still_holds_at_the_end_goes_through_the_later_hooks() -> None:
    class HoldAll(WholeEvents):
        def feed(self, chunk: bytes) -> bytes:
            self._pending += chunk
            return b""

    recorder = Recorder()
    sent = await relayed((HoldAll(), recorder))
    assert sent == [b"".join(PIECES)] and recorder.seen == [b"".join(PIECES)]
