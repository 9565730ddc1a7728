"""The one parser of JSON that a client sends: every port, every route.

:func:`parse_json` accepts exactly RFC 8259 JSON that the rest of Paddock (and
vLLM behind it) can handle, and answers anything else with a 400 in OpenAI's
shape, never a 500:

* the text must be UTF-8 (strictly: no encoded surrogates);
* ``NaN``, ``Infinity``, ``-Infinity`` and numbers too large for a float
  (``1e999``) are refused: they are not JSON, and a float that is not finite
  has no meaning as a sampling parameter;
* nesting is bounded (:data:`MAX_DEPTH` arrays and objects), checked without
  recursion, so no ``RecursionError`` can escape from here or later;
* no string (key or value) may hold a lone UTF-16 surrogate (``"\\ud800"``):
  it cannot be encoded again, by the tokenizer or the audit log alike;
* integers beyond Python's digit limit are refused by the decoder itself.

The common case costs two ``bytes.count`` calls and one regular-expression search
beyond ``json.loads``: the walk over the parsed value runs only when the text
holds more than :data:`MAX_DEPTH` brackets or a surrogate escape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from service.protocol.errors import APIError, invalid_request

MAX_DEPTH = 64  # arrays and objects inside one another
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> NoReturn:
    raise invalid_request(f"The request body is not valid JSON: `{name}` is not a JSON value.")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise invalid_request(f"The request body is not valid JSON: the number {text} is too large.")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)  # built once: json.loads(**kw) is not


def _too_deep() -> APIError:
    return invalid_request(f"The request body is nested too deeply (more than {MAX_DEPTH} arrays or objects).")


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_request(
            "The request body holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair)."
        ) from None


def _walk(value: Any) -> None:
    """Check depth and strings over the whole value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise _too_deep()
            for key, child in item.items():
                _check_string(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise _too_deep()
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_string(item)


def parse_json(raw: bytes) -> Any:
    """The JSON value in ``raw``; a 400 (:func:`~service.protocol.errors.invalid_request`) if it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid_request(f"The request body is not valid UTF-8 (at byte {error.start}).") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise _too_deep() from None
    except APIError:
        raise
    except ValueError as error:
        raise invalid_request(f"The request body is not valid JSON: {error}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(raw):
        _walk(value)
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (400 otherwise)."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body
