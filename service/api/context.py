"""One request as the ingress (or a replica) handles it: the ASGI triple and what is known of it so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.api.asgi import Receive, Scope, Send, header
from service.observability.requests import Observation


@dataclass(eq=False, slots=True)
class Exchange:
    """Passed down the handlers in place of their ``(scope, receive, send, …)`` arguments."""

    scope: Scope
    receive: Receive
    send: Send
    request_id: str
    headers: list[tuple[str, str]]  # response headers every answer carries (``x-request-id``)
    forwarded: dict[str, str] = field(default_factory=dict)  # trace context (and more) for the next hop

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    def header(self, name: bytes) -> str | None:
        return header(self.scope, name)


@dataclass(eq=False, slots=True)
class RequestContext(Exchange):
    """An API call at the ingress: its ``send`` is observed (every message is seen by ``obs``)."""

    obs: Observation = field(kw_only=True)
    client: str = field(default="", kw_only=True)  # the real client address (trusted ``X-Forwarded-For``)
