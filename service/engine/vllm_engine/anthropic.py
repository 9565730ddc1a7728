"""vLLM's Anthropic Messages API layer (``vllm.entrypoints.anthropic``), wired as ``vllm serve`` wires it.

vLLM's ``AnthropicServingMessages`` is its chat server with a converter on
each side: an Anthropic request becomes a chat completion request and the
answer (or its stream) becomes Anthropic's message (or ``message_start`` …
``message_stop`` events) again. It is built from the same engine client,
models, renderer and chat options as the chat server, so chat templates, tool
and reasoning parsers, the context guard and the prompt cap all apply alike.

Errors leave the replica in OpenAI's shape like every other operation's (the
ingress words them in Anthropic's); only an error inside a stream that has
started is written here, as Anthropic's ``event: error``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from vllm.entrypoints.anthropic.protocol import (
    AnthropicCountTokensRequest,
    AnthropicCountTokensResponse,
    AnthropicMessagesRequest,
    AnthropicMessagesResponse,
)
from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

from service.protocol import errors
from service.protocol.routes import Operation

log = logging.getLogger(__name__)

REQUEST_MODELS: dict[Operation, pydantic.TypeAdapter[Any]] = {
    "messages": pydantic.TypeAdapter(AnthropicMessagesRequest),
    "count_tokens": pydantic.TypeAdapter(AnthropicCountTokensRequest),
}

Handler = Callable[[Any, Any], Awaitable[Any]]
_ERROR_EVENT = b"event: error\n"


@dataclass(frozen=True, slots=True)
class Encoded:
    """An answer already serialised (the engine passes ``body`` on as it is, like a JSON response's)."""

    body: bytes
    status_code: int = 200


def _accepted(options: dict[str, Any]) -> dict[str, Any]:
    """The chat server's options that vLLM's Anthropic server takes too."""
    names = inspect.signature(AnthropicServingMessages.__init__).parameters
    return {name: value for name, value in options.items() if name in names}


def anthropic_handlers(client: Any, models: Any, renderer: Any, options: dict[str, Any]) -> dict[Operation, Handler]:
    """The ``messages`` and ``count_tokens`` handlers, from what the chat server is built of."""
    serving = AnthropicServingMessages(
        client, models, "assistant", online_renderer=renderer, request_logger=None, **_accepted(options)
    )

    async def messages(request: AnthropicMessagesRequest, raw_request: Any) -> Any:
        result = await serving.create_messages(request, raw_request)
        if isinstance(result, AnthropicMessagesResponse):  # serialised as vLLM's router does
            return Encoded(result.model_dump_json(exclude_none=True).encode())
        if isinstance(result, pydantic.BaseModel):  # vLLM's ErrorResponse
            return result
        return anthropic_stream(result)

    async def count_tokens(request: AnthropicCountTokensRequest, raw_request: Any) -> Any:
        result = await serving.count_tokens(request, raw_request)
        if isinstance(result, AnthropicCountTokensResponse):
            return Encoded(result.model_dump_json(exclude_none=True).encode())
        return result

    return {"messages": messages, "count_tokens": count_tokens}


async def anthropic_stream(source: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """vLLM's Anthropic events, its error events in Anthropic's types, and a failure as one more of them."""
    try:
        async for item in source:
            chunk = item.encode()
            yield _error_event(chunk) if chunk.startswith(_ERROR_EVENT) else chunk
    except Exception as error:  # noqa: BLE001 - the 200 is gone: end in band
        log.exception("Anthropic stream failed after it started")
        failure = errors.internal(f"The stream failed: {type(error).__name__}.")
        yield errors.in_dialect(failure, "anthropic").sse_event()
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()  # closes vLLM's generator: the engine aborts the request


def _error_event(chunk: bytes) -> bytes:
    """vLLM's ``event: error`` (type ``internal_error``, not one of Anthropic's) as Anthropic's ``api_error``."""
    try:
        data = json.loads(chunk.split(b"data:", 1)[1])
        message = str(data["error"].get("message") or "The stream failed.")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        message = "The stream failed."
    return errors.in_dialect(errors.internal(message), "anthropic").sse_event()
