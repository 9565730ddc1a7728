"""One API request as the ingress handles it: the ASGI triple and what is known of it so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.api.asgi import Receive, Scope, Send, header
from service.observability.requests import Observation


@dataclass(eq=False, slots=True)
class RequestContext:
    """Passed down the ingress's handlers in place of their ``(scope, receive, send, …)`` arguments."""

    scope: Scope
    receive: Receive
    send: Send  # observed: every message is seen by ``obs`` on its way out
    request_id: str
    headers: list[tuple[str, str]]  # response headers every answer carries (``x-request-id``)
    obs: Observation
    client: str = ""  # the real client address (``X-Forwarded-For`` from trusted proxies)
    forwarded: dict[str, str] = field(default_factory=dict)  # headers for the replica (request id, trace)

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    def header(self, name: bytes) -> str | None:
        return header(self.scope, name)
