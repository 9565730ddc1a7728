"""vLLM's requests, errors and streams in OpenAI's terms."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.exceptions import VLLMClientError

from service.protocol import errors

log = logging.getLogger(__name__)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# vLLM's messages name `vllm serve` flags, which a Paddock user cannot pass: name the config key instead.
CONFIG_KEYS = {
    "--enable-auto-tool-choice and --tool-call-parser": "tool_call_parser",
    "--enable-auto-tool-choice": "tool_call_parser",
    "--tool-call-parser": "tool_call_parser",
    "--reasoning-parser": "reasoning_parser",
    "--chat-template": "chat_template",
    "--max-model-len": "max_model_len",
    "--trust-remote-code": "trust_remote_code",
    "--tokenizer-mode": "tokenizer_mode",
}
_FLAG = re.compile(r"--(?:" + "|".join(re.escape(flag[2:]) for flag in CONFIG_KEYS) + r")\b|--([a-z][a-z0-9-]+)")


def config_terms(message: str) -> str:
    """``message`` with each vLLM CLI flag replaced by the Paddock model-entry key that sets it."""
    if "--" not in message:
        return message

    def key(match: re.Match[str]) -> str:
        named = CONFIG_KEYS.get(match.group(0))
        if named is not None:
            return f"the model's `{named}` (models[].{named} in the Paddock config)"
        return f"`models[].engine_args.{match.group(1).replace('-', '_')}` in the Paddock config"

    return _FLAG.sub(key, message)


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


def client_error(error: Exception, body: dict[str, object]) -> errors.APIError:
    """A vLLM client error (a 4xx by vLLM's own classification) raised while validating a request."""
    message = str(error.args[0]) if error.args else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause):
        message = f"{message} {str(cause).strip()}"
    param = getattr(error, "parameter", None)
    if param is None and any(word in message.lower() for word in ("grammar", "structural tag", "schema")):
        param = structured_output_field(body)
    return errors.invalid_request(config_terms(message), param=param)


_GRAMMAR_FAILURES = ("Grammar error", "structured output", "JSON schema", "json_schema", "xgrammar", "guidance")


def structured_output_field(body: dict[str, object]) -> str | None:
    """The request field holding the grammar (schema, regex, choice, tools) a request constrains its output with."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return "response_format.json_schema.schema"
    for name in ("response_format", "structured_outputs", "text"):
        if body.get(name) is not None:
            return name
    return "tools" if body.get("tools") else None


def to_api_error(response: ErrorResponse, body: dict[str, object] | None = None) -> errors.APIError:
    """vLLM's ErrorResponse (type names, integer codes) in OpenAI's terms; ``body`` names a failed grammar's field."""
    error = response.error
    status = int(error.code) if str(error.code).isdigit() else 500
    message = config_terms(error.message)
    if status == 400 and error.param is None and body is not None and any(m in message for m in _GRAMMAR_FAILURES):
        field = structured_output_field(body)
        if field is not None:
            return errors.invalid_request(
                f"Invalid {field}: the output grammar does not compile: {message}", param=field
            )
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
        message = config_terms(str(data["error"].get("message") or "stream failed"))
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


# vLLM 0.32 names the parsed reasoning `reasoning`. As a JSON key it can only appear unescaped as a
# key: inside a string value (content, tool arguments, logprob tokens) its quotes are escaped.
_REASONING_KEY, _REASONING_CONTENT_KEY = b'"reasoning":', b'"reasoning_content":'


def reasoning_as_content_field(body: bytes) -> bytes:
    """A chat completion (or chunk) with ``reasoning`` renamed ``reasoning_content``."""
    return body.replace(_REASONING_KEY, _REASONING_CONTENT_KEY)


async def reasoning_as_content_fields(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in events:
        yield reasoning_as_content_field(chunk)


# Events the Responses stream sends before it has rendered the prompt or generated anything.
_PREAMBLE = (b"event: response.created", b"event: response.in_progress")


async def opened(source: AsyncIterator[Any], body: dict[str, object]) -> AsyncIterator[Any]:
    """``source`` read up to its first event past the preamble: a client error until then is a 400."""
    iterator = source.__aiter__()
    head: list[Any] = []
    try:
        while True:
            item = await iterator.__anext__()
            head.append(item)
            chunk = item.encode() if isinstance(item, str) else bytes(item)
            if not chunk.lstrip().startswith(_PREAMBLE):
                break
    except StopAsyncIteration:
        pass
    except VLLMClientError as error:
        raise client_error(error, body) from None
    return _replayed(head, iterator)


async def _replayed(head: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in head:
        yield item
    async for item in rest:
        yield item
