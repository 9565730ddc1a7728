"""Properties of the one JSON parser (service/protocol/body.py), over bytes Hypothesis makes up.

For any bytes, :func:`parse_json` either returns exactly what an independent reading of strict JSON returns
(UTF-8, RFC 8259, finite numbers, nesting within ``MAX_DEPTH``, no lone surrogate), or raises the OpenAI 400;
never another exception. The reference below is written separately from the parser (recursive, after
``json.loads``), so the two only agree if both are right.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.protocol.body import MAX_DEPTH, json_object, parse_json
from service.protocol.errors import APIError

SETTINGS = settings(max_examples=600, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class NotStrict(Exception):
    """The reference's refusal."""


def _constant(name: str) -> Any:
    raise NotStrict(name)


def _check(value: Any, depth: int) -> None:
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise NotStrict("too deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(key, str):
                _check(key, depth + 1)
            _check(child, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise NotStrict("not finite")
    elif isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError


def strict_json(raw: bytes) -> Any:
    """The value of ``raw`` as strict JSON; :class:`NotStrict` (or the error that shows it) if it is not."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_constant)
        _check(value, 0)
    except (ValueError, RecursionError, NotStrict) as error:  # UnicodeError is a ValueError
        raise NotStrict(str(error)) from None
    return value


# -- what Hypothesis sends ------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None, categories=None))
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@st.composite
def _encoded(draw: st.DrawFn) -> bytes:
    """A JSON-ish text: any value (NaN, Infinity and surrogates included), ASCII-escaped or raw."""
    text = json.dumps(draw(_values), ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")  # a raw lone surrogate becomes bytes that are not UTF-8


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(0, 3 * MAX_DEPTH))
    opener = draw(st.sampled_from(["[", '{"a":', '[{"b":[']))
    closer = {"[": "]", '{"a":': "}", '[{"b":[': "]}]"}[opener]
    return (opener * depth + draw(st.sampled_from(["1", '"x"', "[]", "NaN", '"\\ud800"'])) + closer * depth).encode()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A document (valid, or only for a NaN or a surrogate) with a byte changed, added or taken away."""
    raw = bytearray(json.dumps(draw(_values), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    at = draw(st.integers(0, len(raw)))
    op = draw(st.sampled_from(["insert", "replace", "delete"]))
    byte = draw(st.integers(0, 255))
    if op == "insert":
        raw.insert(at, byte)
    elif at < len(raw):
        if op == "replace":
            raw[at] = byte
        else:
            del raw[at]
    return bytes(raw)


_SPECIAL = st.sampled_from(
    [
        b"1e999",
        b"-1e400",
        b"1" * 5000,
        b"[1e308, 1e309]",
        b'"\\udc00\\ud800"',
        b'"\\ud83d\\ude00"',
        b"\xef\xbb\xbf{}",
        b" ",
        b"",
    ]
)
BODIES = st.binary(max_size=64) | _encoded() | _nested() | _mutated() | _SPECIAL


def _is_400(error: APIError) -> bool:
    payload = error.payload()["error"]
    return error.status == 400 and isinstance(payload, dict) and payload["type"] == "invalid_request_error"


@SETTINGS
@given(BODIES)
def test_any_bytes_parse_as_strict_json_or_are_a_400(raw: bytes) -> None:
    try:
        expected: Any = strict_json(raw)
    except NotStrict:
        expected = NotStrict
    try:
        got = parse_json(raw)
    except APIError as error:
        assert _is_400(error), error
        assert expected is NotStrict, f"refused strict JSON: {raw[:200]!r} ({error.message})"
        return
    assert expected is not NotStrict, f"accepted what is not strict JSON: {raw[:200]!r}"
    assert got == expected
    json.dumps(got, allow_nan=False).encode("utf-8")  # and what it returns can be written out again


@SETTINGS
@given(BODIES)
def test_a_request_body_is_an_object_or_a_400(raw: bytes) -> None:
    try:
        body = json_object(raw)
    except APIError as error:
        assert _is_400(error), error
        return
    assert isinstance(body, dict)


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 100_000])
def test_the_depth_limit_is_exact_and_deep_input_never_recurses(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    if depth <= MAX_DEPTH:
        assert parse_json(raw) == strict_json(raw)
    else:
        with pytest.raises(APIError) as refused:
            parse_json(raw)
        assert _is_400(refused.value)
