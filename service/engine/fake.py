"""A scripted engine for fast unit tests of the layers above the engine seam.

It never stands in for vLLM in an end-to-end claim: it only lets the HTTP,
routing and serve layers be tested without loading a model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from service.engine.base import CallContext, EngineDead, JSONResult, Result, StreamResult
from service.protocol import errors
from service.protocol.routes import Operation


class FakeEngine:
    """Answers every call with ``words``, one SSE event per word when streaming."""

    def __init__(self, model_id: str = "fake", words: tuple[str, ...] = ("Paris", "."), delay_s: float = 0.0) -> None:
        self.model_id = model_id
        self.words = words
        self.delay_s = delay_s
        self.dead = False
        self.unfinished = 0
        self.cancelled = 0
        self.calls: list[tuple[Operation, dict[str, object], CallContext]] = []

    async def start(self) -> None:
        return None

    def status(self) -> dict[str, object]:
        return {"running": not self.dead, "unfinished_requests": self.unfinished}

    async def call(self, operation: Operation, body: dict[str, object], ctx: CallContext) -> Result:
        self.calls.append((operation, body, ctx))
        if body.get("model") != self.model_id:
            raise errors.model_not_found(str(body.get("model")))
        if body.get("stream"):
            return StreamResult(self._events())
        self.unfinished += 1
        try:
            await asyncio.sleep(self.delay_s * len(self.words))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.unfinished -= 1
        return JSONResult(200, json.dumps({"model": self.model_id, "text": " ".join(self.words)}).encode())

    async def _events(self) -> AsyncIterator[bytes]:
        self.unfinished += 1
        try:
            for word in self.words:
                await asyncio.sleep(self.delay_s)
                yield f"data: {json.dumps({'delta': word})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.unfinished -= 1

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDead("fake engine marked dead")

    async def shutdown(self) -> None:
        self.dead = True
