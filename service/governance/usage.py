"""Reading the engine's token usage out of a response as it is relayed.

Non-streamed bodies carry ``usage``; streams carry it in their last event
(Paddock asks the replica for it on every stream, and drops that event again
when the client did not ask for it). Events are passed on whole, as they
arrive; only a partial event at the end of a network chunk waits for its rest.

Anthropic's Messages API words it differently, and the tap reads both: usage
``input_tokens`` (plus ``cache_read_input_tokens`` and
``cache_creation_input_tokens``, which Anthropic counts apart) and
``output_tokens``, in the body, in ``message_start`` (``message.usage``) and in
``message_delta`` (the final output count; its input count, if left out, is
``message_start``'s). Anthropic's streams have no usage-only event, so nothing
of theirs is dropped. A ``count_tokens`` answer (``{"input_tokens": n}``, no
``usage``) generated nothing: it is read as no tokens used.
"""

from __future__ import annotations

import json
import re
from typing import Any

from service.governance.store.base import Usage

_MAX_JSON_BODY = 64 * 1024 * 1024
_FINISH_REASON = re.compile(rb'"finish_reason":"([A-Za-z_]{1,32})"')
_CACHED_INPUT = ("cache_read_input_tokens", "cache_creation_input_tokens")  # Anthropic: not in input_tokens


def _usage(data: Any, previous: Usage | None = None) -> Usage | None:
    """The usage a body or event reports (``previous``: what the stream reported before, for a partial one)."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if usage is None:
        for holder in ("response", "message"):  # Responses API events; Anthropic's message_start
            if isinstance(data.get(holder), dict):
                usage = data[holder].get("usage")
                break
        else:
            if isinstance(data.get("input_tokens"), int):  # Anthropic's count_tokens: nothing generated
                return Usage(0, 0)
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    else:
        prompt, completion = _anthropic_input(usage, previous), usage.get("output_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def _anthropic_input(usage: dict[str, Any], previous: Usage | None) -> int | None:
    """Input tokens in Anthropic's terms: uncached plus cached; a ``message_delta`` may leave them out."""
    given = usage.get("input_tokens")
    if not isinstance(given, int):
        return previous.prompt_tokens if previous is not None and "output_tokens" in usage else None
    return given + sum(n for name in _CACHED_INPUT if isinstance(n := usage.get(name), int))


def _text(data: Any) -> str:
    """Completion text of a body or stream event (for tenants who opted in to text audit)."""
    if not isinstance(data, dict):
        return ""
    delta, output = data.get("delta"), data.get("output_text")
    if isinstance(delta, str):  # Responses API text delta
        return delta
    if isinstance(output, str):
        return output
    if isinstance(delta, dict) or isinstance(data.get("content"), list):  # Anthropic's stream delta / message
        return _anthropic_text(data)
    parts = []
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("delta") or choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
            parts.append(text if isinstance(text, str) else choice.get("text") or "")
    return "".join(p for p in parts if isinstance(p, str))


def _anthropic_text(data: dict[str, Any]) -> str:
    delta = data.get("delta")
    if isinstance(delta, dict):
        text = delta.get("text")
        return text if isinstance(text, str) else ""
    blocks = [b for b in data.get("content") or () if isinstance(b, dict) and b.get("type") == "text"]
    return "".join(t for b in blocks if isinstance(t := b.get("text"), str))


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
                usage = _usage(data, self.usage)
                if self._keep_text:
                    self.text.append(_text(data))
                if usage is not None:
                    self.usage = usage
                    if self._finish:
                        self._stop_reason(data)
                    if self._drop and isinstance(data, dict) and data.get("choices") == []:
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
                reasons.append(data.get("stop_reason"))  # Anthropic's message
                self.finish_reasons.extend(r for r in reasons if isinstance(r, str))
            if self._keep_text:
                self.text.append(_text(data))
            return b""
        rest, self._pending = self._pending, b""
        return rest

    def _stop_reason(self, data: dict[str, Any]) -> None:
        """Anthropic's stop reason, in the ``message_delta`` that also carries the final usage."""
        delta = data.get("delta")
        reason = delta.get("stop_reason") if data.get("type") == "message_delta" and isinstance(delta, dict) else None
        if isinstance(reason, str):
            self.finish_reasons.append(reason)

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
