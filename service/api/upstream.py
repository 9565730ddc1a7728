"""Forwarding a routed request to one model replica's own HTTP server.

One HTTP hop on loopback or the pod network, with pooled keep-alive
connections; streamed bodies are relayed chunk by chunk as they arrive, with
no Ray RPC per token. A client that disconnects closes the upstream
connection, which makes the replica abort its engine request.

A replica that sends nothing for ``read_timeout_s`` (``ingress.upstream_read_timeout_s``:
no response head yet, or a pause inside a body) is given up on: before the
head that is a 504, never retried on another replica (the first one may be
working on it); inside a stream the stream ends in band.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from service.api.asgi import Receive, Scope, Send, encode_headers, header, until_disconnect
from service.config.schema import IngressConfig
from service.protocol.errors import APIError, in_dialect, internal, normalise_error_body, timeout
from service.protocol.routes import Dialect
from service.protocol.streams import StreamHook

INTERNAL_TOKEN_HEADER = "x-paddock-internal-token"
# Set by the ingress from governance policy; the replica enforces it with the real tokenizer.
MAX_PROMPT_TOKENS_HEADER = "x-paddock-max-prompt-tokens"
SPECIAL_TOKENS_HEADER = "x-paddock-special-tokens"  # "allow": the tenant's policy opts out of escaping them
# Request headers worth carrying to the replica (trace context, request id).
FORWARDED_HEADERS = (b"traceparent", b"tracestate", b"baggage")
_ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_READ_TIMEOUT_S: float = IngressConfig.model_fields["upstream_read_timeout_s"].default


def forwarded_headers(scope: Scope) -> dict[str, str]:
    """The request's trace-context headers (``FORWARDED_HEADERS``) that it carries, by name."""
    return {name.decode(): value for name in FORWARDED_HEADERS if (value := header(scope, name)) is not None}


@dataclass(eq=False)
class Endpoint:
    """One replica's data-plane address, with this ingress's in-flight count."""

    url: str
    replica_id: str
    inflight: int = 0
    artifact: str | None = None  # the manifest digest of the model files the replica verified, if it did


class UpstreamUnreachable(Exception):
    """The replica could not be reached before it sent anything: safe to retry."""


class Upstream:
    """A pooled HTTP client to replicas (one per ingress process)."""

    def __init__(
        self, token: str, connect_timeout_s: float = 5.0, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    ) -> None:
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self.read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def open(self, endpoint: Endpoint, path: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send the request; raise :class:`UpstreamUnreachable` if nothing came back, a 504 if the replica took
        the request but sent no response head within the read timeout."""
        sent = {
            **headers,
            "content-type": "application/json",
            INTERNAL_TOKEN_HEADER: self._token,
        }
        try:
            return await self._client().post(endpoint.url + path, data=body, headers=sent, timeout=self._timeout)
        except aiohttp.SocketTimeoutError:  # sent, and nothing back in time: the replica may be working on it
            raise timeout(
                f"The model replica sent no response within {self.read_timeout_s:g} s; the request was abandoned."
            ) from None
        except (TimeoutError, aiohttp.ClientConnectionError) as error:
            raise UpstreamUnreachable(str(error) or type(error).__name__) from error


async def read_error(response: aiohttp.ClientResponse) -> APIError:
    """The replica's (or anything in between's) error, in OpenAI's shape."""
    try:
        body = await response.content.read(_ERROR_BODY_LIMIT)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    finally:
        response.release()
    return normalise_error_body(response.status, body)


@dataclass(eq=False)
class RelayState:
    """How far a relayed response got (for ending it cleanly if it is cut short)."""

    hooks: tuple[StreamHook, ...] = ()  # see every chunk on its way out, in order (usage tap, guardrails)
    status: int = 0
    started: bool = False
    sent: bool = False  # a replica has the request (it may be using the engine), and did not refuse it unprocessed
    artifact: str | None = None  # the artifact digest of the replica it was sent to (for the audit record)
    sse: bool = False
    ended: bool = False
    cut: bool = False  # the replica failed after the 200 went out: the body ended early (in band for streams)
    dialect: Dialect = "openai"  # how an error that ends the stream in band is worded


def _through(hooks: tuple[StreamHook, ...], chunk: bytes) -> bytes:
    for hook in hooks:
        chunk = hook.feed(chunk)
        if not chunk:
            break
    return chunk


def _finish(hooks: tuple[StreamHook, ...]) -> bytes:
    """What the hooks still hold at the end of the body (a later hook sees an earlier one's rest)."""
    rest = b""
    for hook in hooks:
        rest = hook.feed(rest) if rest else b""
        rest += hook.finish()
    return rest


async def _relay_body(response: aiohttp.ClientResponse, send: Send, state: RelayState) -> None:
    hooks = state.hooks
    try:
        async for chunk in response.content.iter_any():
            if hooks:
                chunk = _through(hooks, chunk)
                if not chunk:
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if hooks and (rest := _finish(hooks)):
            await send({"type": "http.response.body", "body": rest, "more_body": True})
    except (TimeoutError, aiohttp.ClientError):
        state.cut = True  # the request's owner records an error, though the status was 200
        if state.sse:  # the 200 is gone: end the stream in band, as OpenAI clients expect
            error = internal("The model replica failed while streaming; the response is incomplete.")
            event = in_dialect(error, state.dialect).sse_event()
            await send({"type": "http.response.body", "body": event, "more_body": True})
    state.ended = True
    await send({"type": "http.response.body", "body": b""})


async def end_early(send: Send, state: RelayState, error: APIError) -> None:
    """End a response cut short: raise ``error`` if nothing was sent yet, else end in band for streams
    (else just close it)."""
    if not state.started:
        raise error
    if state.ended:
        return
    state.ended = True
    if state.sse:
        event = in_dialect(error, state.dialect).sse_event()
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def relay(
    response: aiohttp.ClientResponse,
    receive: Receive | None,
    send: Send,
    headers: Iterable[tuple[str, str]],
    state: RelayState | None = None,
    stop: asyncio.Future[BaseException] | None = None,
) -> None:
    """Relay a successful upstream response (raises ``Disconnected`` if the client left, or what ``stop``
    holds if it completes first; ``receive=None``: ``stop`` alone is watched, the caller watching the client)."""
    state = state or RelayState()
    content_type = response.headers.get("content-type", "application/json")
    state.sse = content_type.startswith("text/event-stream")
    for hook in state.hooks:
        hook.sse = state.sse
    extra = [("cache-control", "no-cache")] if state.sse else []
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(b"content-type", content_type.encode()), *encode_headers([*headers, *extra])],
        }
    )
    state.started, state.status = True, response.status
    try:
        await until_disconnect(_relay_body(response, send, state), receive, stop)
    except BaseException:
        response.close()  # the client left: closing the connection aborts the engine request upstream
        raise
    response.release()
