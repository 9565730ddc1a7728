"""The front door: what every HTTP server of Paddock allows one client, below the application.

uvicorn's httptools protocol, as Paddock runs it (``service.serve.http``), has no
bound on a request's headers, no time limit on sending them, none on a body
that never comes and no cap on connections. :class:`DoorProtocol` adds them,
with the limits of :class:`~service.config.settings.DoorLimits`:

* **connections**: past ``max_connections`` open connections on a port, a new
  one is answered 503 ``overloaded`` and closed at once;
* **headers**: more than ``max_headers`` fields, or more than
  ``max_header_bytes`` of request line and headers, is a 431. The raw bytes are
  counted as they arrive, so a 2 MiB header is refused after its first
  ``max_header_bytes`` (plus one read), not buffered whole;
* **header time**: a request's headers must be complete within
  ``header_timeout_s`` of its first byte (of the connection, for its first
  request), else 408;
* **body time**: :class:`BodyDeadline` gives the application's ``receive``
  ``body_timeout_s`` from the last header to the body's last byte; past it,
  ``receive`` raises a 408 :class:`~service.protocol.errors.APIError`, which the
  application answers (and audits) like any other error;
* **a body that is never read**: a response sent before the request's body was
  complete (a 413 decided from ``Content-Length``, a 401, a 408) ends the
  connection: Paddock stops writing, reads and ignores what the client still
  sends for ``linger_s`` (so that it can read the answer), then closes;
* **malformed HTTP** is a 400 in OpenAI's shape (uvicorn answers it in text).

Every refusal written here is OpenAI's JSON error with ``connection: close``.
uvicorn's own trust of ``X-Forwarded-For`` is off (``proxy_headers=False`` in
``http.start``): the ingress believes forwarded addresses only from
``PADDOCK_TRUSTED_PROXIES``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from asyncio import TimerHandle
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.api.asgi import REQUEST_ID_HEADER, Message, Receive, Scope, Send
from service.config.settings import DEFAULT_DOOR, DoorLimits
from service.protocol import errors

log = logging.getLogger(__name__)
_WARN_EVERY_S = 10.0


def raw_response(error: errors.APIError) -> bytes:
    """``error`` as a whole HTTP/1.1 response that closes the connection.

    It carries a new ``x-request-id``, as every answer of the API does: the door refuses before any request
    was parsed, so there is no client id to echo, but a client can still quote the refusal."""
    body = error.body()
    head = [
        STATUS_LINE[error.status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"%s: %s\r\n" % (REQUEST_ID_HEADER.encode(), uuid.uuid4().hex.encode()),
        b"connection: close\r\n",
        *(f"{name}: {value}\r\n".encode("latin-1") for name, value in error.headers.items()),
        b"\r\n",
    ]
    return b"".join(head) + body


class _Warnings:
    """At most one warning per kind every few seconds: a hostile client must not flood the log."""

    last: ClassVar[dict[str, float]] = {}

    @classmethod
    def warn(cls, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - cls.last.get(kind, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            cls.last[kind] = now
            log.warning(message, *args)


class DoorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the front door's limits (see the module's docstring)."""

    limits: ClassVar[DoorLimits] = DEFAULT_DOOR

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # from a request's first byte (or the connection's start) to its last header
        self._head_bytes = 0  # raw bytes received while its headers are incomplete
        self._head_size = 0  # request line and headers, as parsed
        self._header_count = 0
        self._header_timer: TimerHandle | None = None
        self._linger: TimerHandle | None = None
        self._closing = False  # refused, or answered before its body came: what the client sends is ignored
        self._turned_away = False  # refused at the connection cap: never one of the server's connections

    # -- connections ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._turned_away = True
            _Warnings.warn(
                "cap", "connection cap reached (%d open): new connections are refused", len(self.connections)
            )
            transport.write(raw_response(errors.overloaded("Too many open connections; retry later.")))
            transport.close()
            return
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger = None
        if not self._turned_away:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._turned_away:
            return  # the remainder of a request already answered: read, and ignored
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:  # a limit raised inside a parser callback
            cause = error.__context__
            self._refuse(cause if isinstance(cause, errors.APIError) else _malformed())
            return
        except httptools.HttpParserError:
            self._refuse(_malformed())
            return
        except httptools.HttpParserUpgrade:
            # No upgrade is served (no WebSocket): the request is answered as plain HTTP, then the connection ends.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        if self._awaiting_headers:
            # Everything read while a request's headers are incomplete counts: an upper bound (a read that also
            # ended the previous pipelined request counts whole), exact enough to stop buffering a huge header.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(_headers_too_large(self.limits))

    def send_400_response(self, msg: str) -> None:
        self._refuse(_malformed())

    def shutdown(self) -> None:
        """The server is stopping: a request whose body is still coming was not admitted, and is not waited for."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started and not self._closing:
            self.transport.close()  # its application sees the disconnect (and records it)
            return
        super().shutdown()

    # -- parser callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._head_bytes = self._head_size = self._header_count = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            raise _headers_too_large(self.limits)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            raise errors.headers_too_large(f"The request has more than {self.limits.max_headers} header fields.")
        if self._head_size + len(self.url) > self.limits.max_header_bytes:
            raise _headers_too_large(self.limits)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle  # the request just answered (unless a pipelined one is already parsed: left alone)
        if cycle is not None and cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            # Answered before its body was complete (a 413 from Content-Length, a 401, a 408): the rest is never
            # read, so the connection cannot carry another request.
            self.server_state.total_requests += 1
            self._closing = True
            self._linger_close()
            return
        super().on_response_complete()

    # -- refusals ------------------------------------------------------------

    def _headers_late(self) -> None:
        self._header_timer = None
        limit = self.limits.header_timeout_s
        log.debug("a client sent no complete request headers within %ss", limit)
        self._refuse(errors.request_timeout(f"The request's headers did not arrive within {limit:g} s."))

    def _refuse(self, error: errors.APIError) -> None:
        """Answer ``error`` and end the connection (without an answer if another response is under way)."""
        if self._closing or self.transport.is_closing():
            return
        self._closing = True
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response of this connection is being written: no room for another
            return
        self.transport.write(raw_response(error))
        self._linger_close()

    def _linger_close(self) -> None:
        """Stop writing; read (and ignore) what the client still sends for ``linger_s``, then close."""
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(self.limits.linger_s, self.transport.close)


def _malformed() -> errors.APIError:
    return errors.invalid_request("The request is not valid HTTP/1.1.", code="invalid_http")


def _headers_too_large(limits: DoorLimits) -> errors.APIError:
    return errors.headers_too_large(f"The request line and headers exceed {limits.max_header_bytes} bytes.")


def door_protocol(limits: DoorLimits) -> type[DoorProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``limits``."""
    return type("DoorProtocol", (DoorProtocol,), {"limits": limits})


class BodyDeadline:
    """ASGI wrapper: the application's ``receive`` gives up on a request's body after ``timeout_s`` (408).

    The time runs from the call of the application (its last header) until the message that ends the body;
    after it, ``receive`` is the server's own (it waits for the disconnect only).
    """

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self._timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        complete = False

        async def timed() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise errors.request_timeout(f"The request body did not arrive within {self._timeout_s:g} s.") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed, send)
