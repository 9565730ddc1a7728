"""Small ASGI helpers shared by the ingress and the replica servers.

The data path is plain ASGI under uvicorn (httptools + uvloop): no web
framework between the socket and the forwarding loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from service.protocol.errors import (
    JSON_CONTENT_TYPE,
    APIError,
    Disconnected,
    duplicate_header,
    internal,
    payload_too_large,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)
FIRST = asyncio.FIRST_COMPLETED

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` lower-case)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def sole_header(scope: Scope, name: bytes) -> str | None:
    """The value of a header that may come at most once (a credential): a second one is a 400.

    Two ``Authorization`` headers leave it to each hop which one counts; Paddock believes neither.
    """
    found: str | None = None
    for key, value in scope.get("headers", ()):
        if key == name:
            if found is not None:
                raise duplicate_header(name.decode("latin-1"))
            found = value.decode("latin-1")
    return found


def request_id(scope: Scope) -> str:
    """The client's ``x-request-id`` if it is sane, else a new one."""
    given = header(scope, REQUEST_ID_HEADER.encode())
    if given and _REQUEST_ID_OK.match(given):
        return given
    return uuid.uuid4().hex


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` (the HTTP parser has already refused a malformed one)."""
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes (413).

    A declared ``Content-Length`` over the limit is refused before a byte of the body is read, so a client
    cannot hold the connection by announcing a body it never sends (the front door closes the connection
    after the answer; a body that stalls under the limit is the front door's 408, ``service.serve.door``).
    """
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise payload_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def encode_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON_CONTENT_TYPE,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    raw = [(b"content-type", content_type), *encode_headers(headers)]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, data: object, headers: Iterable[tuple[str, str]] = ()) -> None:
    await send_bytes(send, status, json.dumps(data).encode(), headers=headers)


async def send_error(send: Send, error: APIError, headers: Iterable[tuple[str, str]] = ()) -> None:
    await send_bytes(send, error.status, error.body(), headers=[*error.headers.items(), *headers])


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone away (call after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(
    work: Awaitable[Any], receive: Receive | None, stop: asyncio.Future[BaseException] | None = None
) -> Any:
    """Await ``work``; if the client disconnects first, cancel it and raise :class:`Disconnected`.

    ``stop``, when given, is a second reason to end early (a governance kill): if it completes first,
    ``work`` is cancelled and the exception it holds is raised. ``receive=None`` watches ``stop`` alone
    (one task fewer, where a disconnect is not worth watching for).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive)) if receive is not None else None
    waits = {task, *(w for w in (watcher, stop) if w is not None)}
    try:
        await asyncio.wait(waits, return_when=FIRST)
    finally:
        for pending in (task, watcher):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
    if not task.cancelled():
        return task.result()
    if stop is not None and stop.done():
        raise stop.result()
    raise Disconnected


async def answer_errors(work: Awaitable[None], send: Send, headers: list[tuple[str, str]]) -> None:
    """Run a request handler; any failure before the response started becomes an OpenAI error."""
    try:
        await work
    except APIError as error:
        await send_error(send, error, headers)
    except Disconnected:
        return
    except Exception:  # noqa: BLE001 - a bug must still answer in OpenAI's shape
        log.exception("unhandled error while serving a request")
        with contextlib.suppress(Exception):  # unless the response had already started
            await send_error(send, internal(), headers)
