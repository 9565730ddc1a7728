"""vLLM's requests, errors and streams in OpenAI's terms."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from service.protocol import errors

log = logging.getLogger(__name__)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def requested_tokens(request: pydantic.BaseModel) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = getattr(request, name, None)
        if isinstance(value, int):
            return value
    return None


def check_roles(body: dict[str, object]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in CHAT_ROLES:
            raise errors.invalid_request(
                f"Invalid role {role!r}: expected one of {', '.join(sorted(CHAT_ROLES))}.",
                param=f"messages[{index}].role",
            )


def validation_error(error: pydantic.ValidationError) -> errors.APIError:
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and p[:1].isupper())]
    param = ".".join(loc).replace(".[", "[") or None
    return errors.invalid_request(f"Invalid request: {param}: {first['msg']}", param=param)


def to_api_error(response: ErrorResponse) -> errors.APIError:
    """vLLM's ErrorResponse (type names, integer codes) in OpenAI's terms."""
    error = response.error
    status = int(error.code) if str(error.code).isdigit() else 500
    message = error.message
    if "maximum context length" in message or "your policy allows at most" in message:
        return errors.context_length_exceeded(message) if status == 400 else errors.internal()
    if status == 404 and error.param == "model":
        return errors.APIError(404, message.split(" Valid")[0], code="model_not_found", param="model")
    mapped = errors.from_status(status, message)
    mapped.param = error.param
    if status < 500:
        mapped.type = "invalid_request_error"
        mapped.code = mapped.code if status in (404, 413) else None
    return mapped


def _sse_error(chunk: bytes) -> bytes:
    """Normalise vLLM's in-band stream error event to OpenAI's shape (unchanged if unreadable)."""
    try:
        data = json.loads(chunk.removeprefix(b"data: "))
        status = int(data["error"].get("code") or 500)
        message = str(data["error"].get("message") or "stream failed")
    except (ValueError, KeyError, TypeError, AttributeError):
        return chunk
    error = errors.APIError(status, message, type="server_error" if status >= 500 else "invalid_request_error")
    return b"data: " + error.body() + b"\n\n"


async def in_band_errors(source: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    done = False
    try:
        async for item in source:
            chunk = item.encode() if isinstance(item, str) else bytes(item)
            if chunk.startswith(b'data: {"error"'):
                chunk = _sse_error(chunk)
            done = done or chunk.endswith(b"data: [DONE]\n\n")
            yield chunk
    except Exception as error:  # noqa: BLE001 - the 200 is gone: end in band
        log.exception("stream failed after it started")
        if not done:
            failure = errors.internal(f"The stream failed: {type(error).__name__}.")
            yield failure.sse_event()
