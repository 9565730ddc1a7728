"""Properties of the parameter policy (service/governance/params.py), over bodies and policies Hypothesis makes up.

For any JSON object on any route and any key's parameters, :func:`shape_request` either returns a
:class:`Shaped` or raises the governance :class:`Refusal` (a 400 in OpenAI's shape): never another exception.
And what it lets through holds the policy: no output field above the cap, no more choices than ``max_n`` or
prompts than ``max_batch``, no field the route does not allow, the mandatory system prompt first, the
reasoning effort within its cap, a reservation that covers its prompt and never exceeds what the model can
generate; the body it was given is never changed.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.governance.params import Shaped, shape_request
from service.governance.policy import REASONING_EFFORTS, Parameters
from service.governance.refusal import Refusal
from service.protocol.routes import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, ROUTES

SETTINGS = settings(max_examples=400, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXTENSIONS = ("priority", "top_k", "ignore_eos", "cache_salt", "vllm_xargs")  # vLLM's, for allowed_fields

# JSON as the parser returns it: finite numbers, no lone surrogate.
_text = st.text(max_size=12)
_scalar = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | _text
)
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3), max_leaves=12)
_count = st.integers(-3, 10) | st.integers(-(2**64), 2**64) | st.booleans() | _json
_effort = st.sampled_from(REASONING_EFFORTS) | _json
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_image", "file"]) | _text}, optional={"text": _text}
)
_content = _text | st.lists(_part, max_size=2) | _json
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | _json}, optional={"content": _content}
)
_prompts = (
    _text
    | st.lists(_text, max_size=40)
    | st.lists(st.integers(0, 9), max_size=5)
    | st.lists(st.lists(st.integers(0, 9), max_size=3), max_size=5)
)
_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "custom", "web_search_preview", "code_interpreter", "mcp"]) | _json}
)
# Plausible values per field (the policy reads these), each also sometimes any JSON at all.
_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": _text,
    "messages": st.lists(_message | _message | _json, min_size=1, max_size=4),
    "prompt": _prompts,
    "input": _prompts
    | st.lists(st.fixed_dictionaries({"type": _text, "role": _text, "content": _content}), max_size=3),
    "suffix": _text,
    "system": _text | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=2),
    "instructions": _text,
    "tools": st.lists(_tool, max_size=3),
    "functions": st.lists(st.fixed_dictionaries({"name": _text}), max_size=2),
    "max_tokens": _count,
    "max_completion_tokens": _count,
    "max_output_tokens": _count,
    "n": _count,
    "best_of": _count,
    "stream": st.booleans() | _json,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | _json}) | _json,
    "reasoning_effort": _effort,
    "reasoning": st.fixed_dictionaries({}, optional={"effort": _effort}) | _json,
    "echo": st.booleans(),
    "store": st.booleans() | st.none(),
    "background": st.booleans() | st.none(),
    "previous_response_id": st.none() | _text,
    "conversation": st.none() | _text,
    "web_search_options": st.none() | st.just({}),
}


def _value(name: str) -> st.SearchStrategy[Any]:
    plausible = _PLAUSIBLE.get(name)
    return _json if plausible is None else plausible | plausible | _json


_PROMPT_FIELD = {CHAT: "messages", COMPLETIONS: "prompt", RESPONSES: "input", EMBEDDINGS: "input"}  # else "messages"


@st.composite
def bodies(draw: st.DrawFn, route: str) -> dict[str, Any]:
    """A body with the route's prompt field and a few others, now and then one the route does not take."""
    names = draw(st.lists(st.sampled_from(sorted(ROUTES[route].fields)), unique=True, max_size=8))
    body = {name: draw(_value(name)) for name in ["model", _PROMPT_FIELD.get(route, "messages"), *names]}
    if draw(st.sampled_from([False] * 9 + [True])):
        body[draw(st.sampled_from(EXTENSIONS) | _text)] = draw(_json)
    return body


_PARAMETERS = st.builds(
    Parameters,
    max_output_tokens=st.none() | st.integers(1, 5000),
    output_tokens_over_cap=st.sampled_from(["clamp", "reject"]),
    max_prompt_tokens=st.none() | st.integers(1, 5000),
    max_n=st.integers(1, 4),
    max_batch=st.integers(1, 40),
    system_prompt=st.none() | _text,
    allowed_fields=st.lists(st.sampled_from(EXTENSIONS), unique=True, max_size=2).map(tuple),
    max_reasoning_effort=st.none() | st.sampled_from(REASONING_EFFORTS),
    builtin_tools=st.lists(st.sampled_from(["web_search", "web_search_preview", "mcp"]), unique=True).map(tuple),
    special_tokens=st.sampled_from(["escape", "allow"]),
)
CASES = st.sampled_from(sorted(ROUTES)).flatmap(
    lambda route: st.tuples(st.just(route), bodies(route), _PARAMETERS, st.integers(1, 10_000), st.none() | _text)
)


@SETTINGS
@given(CASES)
def test_a_body_is_shaped_within_the_policy_or_refused_with_a_400(case: tuple[Any, ...]) -> None:
    route, body, params, max_model_len, salt = case
    given_body = copy.deepcopy(body)
    try:
        shaped = shape_request(route, body, params, max_model_len=max_model_len, cache_salt=salt)
    except Refusal as refusal:
        assert refusal.status == 400 and refusal.code in ("invalid_value", "unknown_parameter"), refusal
        assert refusal.param is not None
        assert body == given_body
        return
    assert body == given_body, "the body it was given was changed"
    _holds_the_policy(route, given_body, shaped, params, max_model_len, salt)


def _holds_the_policy(
    route: str, given: dict[str, Any], shaped: Shaped, params: Parameters, max_model_len: int, salt: str | None
) -> None:
    spec, out = ROUTES[route], shaped.body
    assert set(out) <= spec.fields | set(params.allowed_fields) | {"cache_salt"}
    cap = params.max_output_tokens
    for name in spec.output_fields:
        if name in out and out[name] is not None:
            assert type(out[name]) is int and 1 <= out[name] <= (cap or out[name]), (name, out[name], cap)
            if params.output_tokens_over_cap == "reject" and given.get(name) is not None:
                assert out[name] == given[name]  # never changed: over the cap it was refused
    if cap is not None and spec.output_fields and all(given.get(name) is None for name in spec.output_fields):
        assert out[spec.output_fields[0]] == cap  # none asked for: the cap is set
    for name in spec.choice_fields:
        if out.get(name) is not None:
            assert 1 <= out[name] <= params.max_n
    assert 1 <= shaped.weight <= params.max_batch and (shaped.weight == 1 or spec.batched_field)
    per_prompt = min(params.max_prompt_tokens or max_model_len, max_model_len)
    assert 0 < shaped.prompt_tokens <= per_prompt * shaped.weight
    assert shaped.prompt_tokens <= shaped.reserve_tokens
    if route != EMBEDDINGS:
        sequences = shaped.weight * max([1, *(out.get(name) or 1 for name in spec.choice_fields)])
        assert shaped.reserve_tokens <= max_model_len * sequences
    assert shaped.max_prompt_tokens == params.max_prompt_tokens and shaped.timeout_s == params.request_timeout_s
    assert shaped.special_tokens == (params.special_tokens == "allow")
    assert type(shaped.stream) is bool and (shaped.stream or not shaped.include_usage)
    if shaped.stream and route in (CHAT, COMPLETIONS):
        assert out["stream_options"]["include_usage"] is True  # the usage chunk settles the request
    if salt is not None and route != EMBEDDINGS:
        assert out["cache_salt"] is not None
    if params.system_prompt and route == CHAT:
        assert out["messages"][0] == {"role": "system", "content": params.system_prompt}
    if params.system_prompt and route == RESPONSES:
        assert out["input"][0] == {"type": "message", "role": "system", "content": params.system_prompt}
    if params.max_reasoning_effort is not None and route in (CHAT, RESPONSES):
        effort = out["reasoning_effort"] if route == CHAT else out["reasoning"]["effort"]
        assert REASONING_EFFORTS.index(effort) <= REASONING_EFFORTS.index(params.max_reasoning_effort)
