"""What may watch, and change, a response as the ingress relays it.

Hooks see every chunk on its way to the client, in order, and return what to
pass on: the usage tap (settlement, the dropped usage chunk), and later
guardrails that watch a stream. The relay (``service.api.upstream``) calls
them; whoever owns the request (governance, or the ingress when ungoverned)
supplies them.
"""

from __future__ import annotations

from typing import Protocol


class StreamHook(Protocol):
    """One hook on a relayed response body."""

    sse: bool  # set by the relay before the first chunk: the response is a server-sent-event stream

    def feed(self, chunk: bytes) -> bytes:
        """See one chunk as it arrives; return what to pass on (``b""`` holds it back)."""
        ...

    def finish(self) -> bytes:
        """The body ended: return what is left to pass on."""
        ...
