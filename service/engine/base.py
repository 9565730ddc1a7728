"""The engine seam: what the layers above need from an inference engine.

The vLLM adapter (the ``vllm_engine`` package) is the only code that imports vLLM;
``fake.py`` implements the same interface for fast unit tests of the layers
above. An engine answers OpenAI API calls with already-encoded bodies, so the
HTTP layer never re-serialises what the engine produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from service.protocol.routes import Operation


@dataclass
class JSONResult:
    """A complete JSON response (success or OpenAI-shaped error)."""

    status: int
    body: bytes


@dataclass
class StreamResult:
    """A server-sent-event stream; each item is one or more complete events."""

    events: AsyncIterator[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Result = JSONResult | StreamResult


@dataclass(frozen=True)
class CallContext:
    """What the engine may know about the caller of one request."""

    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    max_prompt_tokens: int | None = None  # governance policy, enforced with the real tokenizer
    special_tokens: bool = False  # the tenant's policy reads control tokens typed into content as control tokens


class EngineDead(Exception):
    """The engine can no longer serve; the replica must be replaced."""


class Engine(Protocol):
    """One model's engine inside one replica."""

    model_id: str

    async def start(self) -> None:
        """Load the model; return when it can serve."""

    async def call(self, operation: Operation, body: dict[str, object], ctx: CallContext) -> Result:
        """Serve one OpenAI API call; errors come back as OpenAI-shaped JSON results or raise protocol errors."""

    def status(self) -> dict[str, object]:
        """Cheap engine state for health and status routes (e.g. unfinished requests)."""

    async def check_health(self) -> None:
        """Raise :class:`EngineDead` if the engine cannot serve any more."""

    async def shutdown(self) -> None:
        """Stop the engine and every process it started."""
