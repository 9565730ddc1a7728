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


def _sse(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeEngine:
    """Answers every call with ``words``, one SSE event per word when streaming.

    The Anthropic operations answer in Anthropic's shapes (``messages``: a message or its events, with usage;
    ``count_tokens``: ``input_tokens``), the others with ``{"model", "text"}`` or ``{"delta"}`` events.
    """

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
        if operation == "count_tokens":
            return JSONResult(200, json.dumps({"input_tokens": self.input_tokens(body)}).encode())
        if body.get("stream"):
            return StreamResult(self._message_events(body) if operation == "messages" else self._events())
        self.unfinished += 1
        try:
            await asyncio.sleep(self.delay_s * len(self.words))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.unfinished -= 1
        if operation == "messages":
            return JSONResult(200, json.dumps(self._message(body)).encode())
        return JSONResult(200, json.dumps({"model": self.model_id, "text": " ".join(self.words)}).encode())

    @staticmethod
    def input_tokens(body: dict[str, object]) -> int:
        """The fake's prompt size: one token per word of the JSON of ``system`` and ``messages``."""
        return len(json.dumps([body.get("system"), body.get("messages")]).split())

    def _message(self, body: dict[str, object], content: bool = True) -> dict[str, object]:
        text = [{"type": "text", "text": " ".join(self.words)}] if content else []
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": self.model_id,
            "content": text,
            "stop_reason": "end_turn" if content else None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens(body), "output_tokens": len(self.words) if content else 0},
        }

    async def _message_events(self, body: dict[str, object]) -> AsyncIterator[bytes]:
        self.unfinished += 1
        try:
            yield _sse("message_start", {"type": "message_start", "message": self._message(body, content=False)})
            block = {"type": "text", "text": ""}
            yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
            for word in self.words:
                await asyncio.sleep(self.delay_s)
                delta = {"type": "text_delta", "text": word}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            stop = {"stop_reason": "end_turn", "stop_sequence": None}
            usage = {"input_tokens": self.input_tokens(body), "output_tokens": len(self.words)}
            yield _sse("message_delta", {"type": "message_delta", "delta": stop, "usage": usage})
            yield _sse("message_stop", {"type": "message_stop"})
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.unfinished -= 1

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
