"""OpenAI's error body, and the constructors of every error Paddock answers with.

Every error Paddock returns — from routing, governance, the engine, the
serving infrastructure or a stream that fails after its 200 — is an
:class:`APIError` (governance's ``Refusal`` is one too) and leaves as the body
``{"error": {"message", "type", "param", "code"}}`` with ``application/json``.
Any layer may raise these; only the HTTP layer (``service.api.asgi``) writes them.

Messages and ``param`` often quote what the client sent (a model name, a path, a
field). Every :class:`APIError` bounds both when it is made (:func:`bounded`), so no
client input comes back at more than :data:`MAX_MESSAGE_CHARS` characters, whatever
raised it.

A route of the Anthropic dialect answers the same errors in Anthropic's shape
instead: the ingress turns each one with :func:`in_dialect` into an
:class:`AnthropicAPIError` (``{"type": "error", "error": {"type", "message"}}``,
Anthropic's statuses, and ``event: error`` in a stream).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.protocol.routes import Dialect

JSON_CONTENT_TYPE = b"application/json"
MAX_MESSAGE_CHARS = 1024  # an error's message, client input quoted in it included
MAX_PARAM_CHARS = 256  # an error's ``param`` (it may name a field the client made up)


def bounded(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its start and end kept, the middle elided with a count."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 2)
    head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3 :]
    return f"{head}…[{len(text) - len(head) - len(tail)} characters omitted]…{tail}"


@dataclass
class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields (message and param bounded: :func:`bounded`)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.message = bounded(str(self.message), MAX_MESSAGE_CHARS)
        if self.param is not None:
            self.param = bounded(str(self.param), MAX_PARAM_CHARS)

    def __str__(self) -> str:
        return f"{self.status} {self.code or self.type}: {self.message}"

    def payload(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()

    def sse_event(self) -> bytes:
        """The in-band end of a stream that already sent its 200."""
        return b"data: " + self.body() + b"\n\ndata: [DONE]\n\n"


class Disconnected(Exception):
    """The client went away (while its body was read, or before its response ended)."""


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    # Same words whether the model does not exist or the caller may not use it,
    # and never a list of the models that do exist.
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def route_not_found(path: str) -> APIError:
    return APIError(404, f"Unknown route: {path}", code="not_found")


READ_METHODS = ("GET", "HEAD")  # what a plain GET route takes


def method_not_allowed(method: str, path: str, allowed: tuple[str, ...]) -> APIError:
    """A 405 with the ``Allow`` header RFC 9110 requires on it: the methods ``path`` does take."""
    return APIError(
        405,
        f"Method {method} is not allowed on {path}; it takes {', '.join(allowed)}.",
        code="method_not_allowed",
        headers={"allow": ", ".join(allowed)},
    )


def payload_too_large(limit: int) -> APIError:
    return APIError(413, f"Request body exceeds the limit of {limit} bytes", code="payload_too_large")


def request_timeout(message: str) -> APIError:
    """The client took too long to send its request (its headers or its body)."""
    return APIError(408, message, code="request_timeout")


def headers_too_large(message: str) -> APIError:
    return APIError(431, message, code="request_header_fields_too_large")


def duplicate_header(name: str) -> APIError:
    """A header that must come at most once (a credential) came more than once."""
    return APIError(400, f"The request has more than one `{name}` header; send exactly one.", code="duplicate_header")


def context_length_exceeded(message: str) -> APIError:
    return APIError(400, message, code="context_length_exceeded", param="messages")


def overloaded(message: str = "The service is overloaded; retry later.") -> APIError:
    return APIError(503, message, type="server_error", code="overloaded", headers={"retry-after": "1"})


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="service_unavailable", headers={"retry-after": "5"})


def timeout(message: str = "The request timed out.") -> APIError:
    return APIError(504, message, type="server_error", code="timeout")


def internal(message: str = "Internal server error.") -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


_STATUS_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "payload_too_large"),
    431: ("invalid_request_error", "request_header_fields_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def from_status(status: int, detail: str | None = None) -> APIError:
    """Wrap a bare status (e.g. a proxy's text/plain error page) in OpenAI's shape."""
    kind, code = _STATUS_TYPES.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    message = (detail or "").strip()[:500] or f"HTTP {status}"
    return APIError(status, message, type=kind, code=code)


def normalise_error_body(status: int, body: bytes) -> APIError:
    """Turn any error body (vLLM's, a proxy's page) into an :class:`APIError`."""
    try:
        data = json.loads(body)
    except ValueError:
        return from_status(status, body.decode("utf-8", "replace"))
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        detail = data.get("detail") if isinstance(data, dict) else None
        return from_status(status, detail if isinstance(detail, str) else None)
    fallback = from_status(status)
    return APIError(
        status,
        str(error.get("message") or fallback.message),
        type=str(error.get("type") or fallback.type),
        code=error.get("code") if isinstance(error.get("code"), str) else fallback.code,
        param=error.get("param") if isinstance(error.get("param"), str) else None,
    )


# Anthropic's error type per HTTP status (docs.anthropic.com/en/api/errors); other statuses are
# ``invalid_request_error`` below 500 and ``api_error`` from 500.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Statuses Anthropic does not use, as the one it answers the same condition with.
_ANTHROPIC_STATUS = {502: 500, 503: 529}
# Every ``error.type`` an Anthropic-dialect error can carry (:func:`in_dialect`).
ANTHROPIC_ERROR_TYPES = frozenset({*_ANTHROPIC_TYPES.values(), "invalid_request_error", "api_error"})


class AnthropicAPIError(APIError):
    """An :class:`APIError` as Anthropic's API words it (body, statuses and the in-band stream event)."""

    def payload(self) -> dict[str, object]:
        return {"type": "error", "error": {"type": self.type, "message": self.message}}

    def sse_event(self) -> bytes:
        return b"event: error\ndata: " + self.body() + b"\n\n"


def in_dialect(error: APIError, dialect: Dialect) -> APIError:
    """``error`` as a route of ``dialect`` answers it (OpenAI's errors are every layer's own)."""
    if dialect == "openai" or isinstance(error, AnthropicAPIError):
        return error
    status = _ANTHROPIC_STATUS.get(error.status, error.status)
    kind = _ANTHROPIC_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return AnthropicAPIError(
        status, error.message, type=kind, code=error.code, param=error.param, headers=dict(error.headers)
    )
