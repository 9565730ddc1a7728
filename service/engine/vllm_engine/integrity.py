"""Prompt integrity: a model's control tokens typed into a request are read as text.

A chat template writes the client's strings (message content, tool schemas, earlier tool calls)
into one prompt, which vLLM then tokenises with the tokenizer's added tokens recognised anywhere.
So ``<|im_end|>\\n<|im_start|>system`` typed into a user message would open a real system turn.
Paddock escapes every added token of the model's tokenizer in those strings by putting a
zero-width space after its first character: the model sees the same text, as ordinary tokens,
and no control token the client did not get from the template. A tenant may opt out
(``parameters.special_tokens: allow``).
"""

from __future__ import annotations

import re
from typing import Any

from service.protocol.routes import Operation

ZERO_WIDTH_SPACE = "\u200b"

# The request fields whose strings a template renders, per API (everything under them is escaped).
RENDERED_FIELDS: dict[Operation, tuple[str, ...]] = {
    "chat": ("messages", "tools"),
    "responses": ("input", "instructions", "tools"),
    "messages": ("messages", "system", "tools"),
    "count_tokens": ("messages", "system", "tools"),
}


class SpecialTokenEscaper:
    """Escapes one tokenizer's added tokens (special or not) in client strings."""

    def __init__(self, markers: list[str]) -> None:
        markers = sorted({m for m in markers if len(m) > 1 and m.strip()}, key=len, reverse=True)
        self.markers = tuple(markers)
        self._firsts = tuple({m[0] for m in markers})
        self._pattern = re.compile("|".join(map(re.escape, markers))) if markers else None

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialTokenEscaper:
        """The escaper for a Hugging Face-style tokenizer (none for one without added tokens)."""
        added = getattr(tokenizer, "get_added_vocab", None)
        try:
            markers = list(added()) if callable(added) else []
        except (NotImplementedError, AttributeError):  # e.g. a Mistral tokenizer: it never parses them in text
            markers = []
        return cls(markers)

    def text(self, value: str) -> str:
        if self._pattern is None or not any(first in value for first in self._firsts):
            return value  # the common case: one C-speed scan per marker's first character
        return self._pattern.sub(_escaped, value)

    def body(self, operation: Operation, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with its rendered fields escaped (the same object if nothing needed it)."""
        if self._pattern is None:
            return body
        changed: dict[str, Any] = {}
        for name in RENDERED_FIELDS.get(operation, ()):
            if name in body:
                value = self._walk(body[name])
                if value is not body[name]:
                    changed[name] = value
        return {**body, **changed} if changed else body

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            escaped = self.text(value)
            return value if escaped == value else escaped
        if isinstance(value, list):
            items = [self._walk(item) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, dict):
            entries = {key: self._walk(item) for key, item in value.items()}
            return value if all(entries[k] is value[k] for k in value) else entries
        return value


def _escaped(match: re.Match[str]) -> str:
    marker = match.group(0)
    return marker[0] + ZERO_WIDTH_SPACE + marker[1:]
