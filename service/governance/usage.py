"""Reading the engine's token usage out of a response as it is relayed.

Non-streamed bodies carry ``usage``; streams carry it in their last event
(Paddock asks the replica for it on every stream, and drops that event again
when the client did not ask for it). Events are passed on whole, as they
arrive; only a partial event at the end of a network chunk waits for its rest.
"""

from __future__ import annotations

import json
import re
from typing import Any

from service.governance.store.base import Usage

_MAX_JSON_BODY = 64 * 1024 * 1024
_FINISH_REASON = re.compile(rb'"finish_reason":"([A-Za-z_]{1,32})"')


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if usage is None and isinstance(data.get("response"), dict):  # Responses API events
        usage = data["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def _text(data: Any) -> str:
    """Completion text of a body or stream event (for tenants who opted in to text audit)."""
    if not isinstance(data, dict):
        return ""
    delta, output = data.get("delta"), data.get("output_text")
    if isinstance(delta, str):  # Responses API text delta
        return delta
    if isinstance(output, str):
        return output
    parts = []
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("delta") or choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
            parts.append(text if isinstance(text, str) else choice.get("text") or "")
    return "".join(p for p in parts if isinstance(p, str))


class UsageTap:
    """Sees every relayed chunk; ``feed`` returns what to pass on."""

    def __init__(
        self, sse: bool, drop_usage_event: bool = False, keep_text: bool = False, finish_reasons: bool = False
    ) -> None:
        self.sse = sse
        self._drop = drop_usage_event
        self._keep_text = keep_text
        self._finish = finish_reasons  # collect each choice's finish_reason (for traces)
        self.finish_reasons: list[str] = []
        self._pending = b""
        self._body: list[bytes] = []
        self._size = 0
        self.usage: Usage | None = None
        self.text: list[str] = []

    def feed(self, chunk: bytes) -> bytes:
        if not self.sse:
            self._size += len(chunk)
            if self._size <= _MAX_JSON_BODY:
                self._body.append(chunk)
            return chunk
        if self._finish and b'"finish_reason":"' in chunk:
            self.finish_reasons.extend(m.decode() for m in _FINISH_REASON.findall(chunk))
        if not self._keep_text and not self._pending and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return chunk  # the common case: whole events, none with usage (the only event ever dropped)
        data = self._pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: end + 2], data[end + 2 :]
        return self._events(complete)

    def _events(self, complete: bytes) -> bytes:
        kept = []
        for event in complete.split(b"\n\n")[:-1]:
            if self._keep_text or b'"usage"' in event:
                data = _event_data(event)
                usage = _usage(data)
                if self._keep_text:
                    self.text.append(_text(data))
                if usage is not None:
                    self.usage = usage
                    if self._drop and isinstance(data, dict) and not data.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def finish(self) -> bytes:
        """What is left to pass on at the end of the body."""
        if not self.sse:
            try:
                data = json.loads(b"".join(self._body))
            except ValueError:
                data = None
            self.usage = _usage(data)
            if self._finish and isinstance(data, dict):
                reasons = [c.get("finish_reason") for c in data.get("choices") or () if isinstance(c, dict)]
                self.finish_reasons.extend(r for r in reasons if isinstance(r, str))
            if self._keep_text:
                self.text.append(_text(data))
            return b""
        rest, self._pending = self._pending, b""
        return rest

    def completion(self) -> str:
        return "".join(self.text)


def _event_data(event: bytes) -> Any:
    payload = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not payload or payload == b"[DONE]":
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None
