"""The request parameter policy (service/governance/params.py) over the route table's fields."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from service.governance.params import (
    _ENCODER,
    _OPAQUE_PARTS,
    TEMPLATE_TOKENS,
    TOOLS_TOKENS,
    Shaped,
    _encode,
    shape_request,
)
from service.governance.policy import Parameters
from service.governance.refusal import Refusal
from service.protocol.routes import CHAT, COMPLETIONS, EMBEDDINGS, FIELDS, MESSAGES, RESPONSES, ROUTES

MML = 4096
USER_HI = [{"role": "user", "content": "hi"}]


def shape(
    route: str,
    body: dict[str, Any],
    *,
    max_model_len: int = MML,
    cache_salt: str | None = None,
    **params: Any,
) -> Shaped:
    return shape_request(route, body, Parameters(**params), max_model_len=max_model_len, cache_salt=cache_salt)


def refusal(route: str, body: dict[str, Any], **kwargs: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        shape(route, body, **kwargs)
    return caught.value


BASE: dict[str, dict[str, Any]] = {
    CHAT: {"model": "m", "messages": USER_HI},
    COMPLETIONS: {"model": "m", "prompt": "x"},
    RESPONSES: {"model": "m", "input": "x"},
    EMBEDDINGS: {"model": "m", "input": "x"},
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER_HI, **fields}


def size(*fields: Any) -> int:
    """UTF-8 bytes of the prompt-bearing fields as the policy encodes them."""
    return len(json.dumps(list(fields), separators=(",", ":"), ensure_ascii=False).encode())


# -- field allow-list ----------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["cache_salt", "priority", "kv_transfer_params", "vllm_xargs", "ignore_eos", "min_tokens", "top_k"]
    + ["repetition_penalty", "guided_json", "structured_outputs", "chat_template", "chat_template_kwargs"]
    + ["add_generation_prompt", "request_id", "return_tokens_as_token_ids", "anything_else"],
)
def test_vllm_extensions_are_refused_and_named(field: str) -> None:
    error = refusal(CHAT, chat(**{field: 1}))
    assert error.reason == "unknown_parameter"
    assert error.param == field
    assert error.message == f"Unrecognized request argument supplied: {field}"


def test_the_first_unknown_field_in_sorted_order_is_named() -> None:
    names = ["zeta", "top_k", "priority", "vllm_xargs", "min_tokens", "ignore_eos", "guided_json", "beta", "seedx"]
    error = refusal(CHAT, chat(**dict.fromkeys(names, 1)))
    assert error.param == "beta"
    assert error.message.endswith(": beta")
    assert refusal(CHAT, chat(**dict.fromkeys(reversed(names), 1))).param == "beta"


def test_allowed_fields_let_a_tenant_set_named_extensions() -> None:
    shaped = shape(CHAT, chat(top_k=5, min_tokens=2), allowed_fields=("top_k", "min_tokens"))
    assert shaped.body["top_k"] == 5 and shaped.body["min_tokens"] == 2
    error = refusal(CHAT, chat(top_k=5, ignore_eos=True), allowed_fields=("top_k",))
    assert error.param == "ignore_eos"


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (COMPLETIONS, {"model": "m", "prompt": "x", "messages": []}, "messages"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_completion_tokens": 5}, "max_completion_tokens"),
        (CHAT, chat(best_of=2), "best_of"),
        (CHAT, chat(max_output_tokens=5), "max_output_tokens"),
        (RESPONSES, {"model": "m", "input": "x", "max_tokens": 5}, "max_tokens"),
        (RESPONSES, {"model": "m", "input": "x", "n": 2}, "n"),
        (EMBEDDINGS, {"model": "m", "input": "x", "stream": True}, "stream"),
        (EMBEDDINGS, {"model": "m", "input": "x", "truncate_prompt_tokens": 5}, "truncate_prompt_tokens"),
    ],
)
def test_fields_of_another_route_are_unknown(route: str, body: dict[str, Any], field: str) -> None:
    assert refusal(route, body).param == field


def test_every_documented_field_passes_the_allow_list() -> None:
    for route, fields in FIELDS.items():
        assert "model" in fields
        for field in sorted(fields):
            try:
                shape(route, {**BASE[route], field: None})
            except Refusal as error:
                assert error.reason != "unknown_parameter", (route, field)


def test_unknown_routes_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        shape("/v1/audio/speech", {"model": "m"})


# -- cache_salt ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, chat()),
        (COMPLETIONS, {"model": "m", "prompt": "x"}),
        (RESPONSES, {"model": "m", "input": "x"}),
    ],
)
def test_cache_salt_is_set_on_generation_routes(route: str, body: dict[str, Any]) -> None:
    assert shape(route, body, cache_salt="salt").body["cache_salt"] == "salt"
    assert "cache_salt" not in shape(route, body).body


def test_cache_salt_is_not_set_on_embeddings() -> None:
    assert "cache_salt" not in shape(EMBEDDINGS, {"model": "m", "input": "x"}, cache_salt="salt").body


def test_a_clients_cache_salt_is_refused_unless_allowed_and_then_kept() -> None:
    error = refusal(CHAT, chat(cache_salt="mine"), cache_salt="ours")
    assert (error.reason, error.param) == ("unknown_parameter", "cache_salt")
    allowed = ("cache_salt",)
    assert shape(CHAT, chat(cache_salt="mine"), cache_salt="ours", allowed_fields=allowed).body["cache_salt"] == "mine"
    assert shape(CHAT, chat(cache_salt=None), cache_salt="ours", allowed_fields=allowed).body["cache_salt"] == "ours"
    assert shape(CHAT, chat(), cache_salt="ours", allowed_fields=allowed).body["cache_salt"] == "ours"


# -- output cap ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (CHAT, chat(max_tokens=5000), "max_tokens"),
        (CHAT, chat(max_completion_tokens=5000), "max_completion_tokens"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": 5000}, "max_tokens"),
        (RESPONSES, {"model": "m", "input": "x", "max_output_tokens": 5000}, "max_output_tokens"),
    ],
)
def test_output_over_the_cap_is_clamped(route: str, body: dict[str, Any], field: str) -> None:
    assert shape(route, body, max_output_tokens=1024).body[field] == 1024


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (CHAT, chat(max_tokens=5000), "max_tokens"),
        (CHAT, chat(max_completion_tokens=5000), "max_completion_tokens"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": 5000}, "max_tokens"),
        (RESPONSES, {"model": "m", "input": "x", "max_output_tokens": 5000}, "max_output_tokens"),
    ],
)
def test_output_over_the_cap_is_rejected_when_the_key_says_so(route: str, body: dict[str, Any], field: str) -> None:
    error = refusal(route, body, max_output_tokens=1024, output_tokens_over_cap="reject")
    assert (error.reason, error.param) == ("invalid_parameter", field)
    assert error.message == f"{field} is 5000 but this key allows at most 1024 output tokens."


def test_output_at_or_under_the_cap_is_left_alone() -> None:
    for value in (1, 1024):
        shaped = shape(CHAT, chat(max_tokens=value), max_output_tokens=1024, output_tokens_over_cap="reject")
        assert shaped.body["max_tokens"] == value
        assert "max_completion_tokens" not in shaped.body


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (CHAT, chat(), "max_completion_tokens"),
        (CHAT, chat(max_tokens=None, max_completion_tokens=None), "max_completion_tokens"),
        (COMPLETIONS, {"model": "m", "prompt": "x"}, "max_tokens"),
        (RESPONSES, {"model": "m", "input": "x"}, "max_output_tokens"),
    ],
)
def test_the_cap_is_set_when_no_output_limit_is_given(route: str, body: dict[str, Any], field: str) -> None:
    shaped = shape(route, body, max_output_tokens=64)
    assert shaped.body[field] == 64
    if route == CHAT:
        assert shaped.body.get("max_tokens") is None


def test_without_a_cap_no_output_field_is_added() -> None:
    assert shape(CHAT, chat()).body == {**chat()}


def test_both_chat_output_fields_are_validated_and_capped() -> None:
    shaped = shape(CHAT, chat(max_completion_tokens=10, max_tokens=5000), max_output_tokens=1024)
    assert (shaped.body["max_completion_tokens"], shaped.body["max_tokens"]) == (10, 1024)
    strict = {"max_output_tokens": 1024, "output_tokens_over_cap": "reject"}
    error = refusal(CHAT, chat(max_completion_tokens=10, max_tokens=5000), **strict)
    assert error.param == "max_tokens"
    error = refusal(CHAT, chat(max_completion_tokens=5000, max_tokens=6000), **strict)
    assert error.param == "max_completion_tokens"
    assert refusal(CHAT, chat(max_completion_tokens=10, max_tokens="5")).param == "max_tokens"


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, 10.5, "10", [10], {"n": 1}])
@pytest.mark.parametrize(
    ("route", "field"),
    [
        (CHAT, "max_tokens"),
        (CHAT, "max_completion_tokens"),
        (COMPLETIONS, "max_tokens"),
        (RESPONSES, "max_output_tokens"),
    ],
)
def test_output_fields_must_be_positive_integers(route: str, field: str, value: Any) -> None:
    error = refusal(route, {**BASE[route], field: value})
    assert (error.reason, error.param) == ("invalid_parameter", field)


def test_embeddings_are_untouched_by_output_rules() -> None:
    body = {"model": "m", "input": ["a", "b"], "encoding_format": "float"}
    shaped = shape(EMBEDDINGS, body, max_output_tokens=8, output_tokens_over_cap="reject", system_prompt="S")
    assert shaped.body == body
    assert shaped.stream is False and shaped.include_usage is False


# -- n and best_of -------------------------------------------------------------


def test_n_within_max_n_passes_and_over_it_is_refused() -> None:
    assert shape(CHAT, chat(n=3), max_n=3).body["n"] == 3
    error = refusal(CHAT, chat(n=4), max_n=3)
    assert (error.reason, error.param) == ("invalid_parameter", "n")
    assert "4" in error.message and "3" in error.message
    assert refusal(CHAT, chat(n=2)).param == "n"  # max_n defaults to 1


def test_best_of_is_capped_like_n() -> None:
    body = {"model": "m", "prompt": "x"}
    assert shape(COMPLETIONS, {**body, "best_of": 2, "n": 2}, max_n=2).body["best_of"] == 2
    assert refusal(COMPLETIONS, {**body, "best_of": 3, "n": 1}, max_n=2).param == "best_of"
    assert refusal(COMPLETIONS, {**body, "best_of": 3, "n": 3}, max_n=2).param == "best_of"  # sorted: first
    assert refusal(COMPLETIONS, {**body, "n": 3}, max_n=2).param == "n"


@pytest.mark.parametrize("value", [0, -2, True, 2.0, "2"])
def test_n_and_best_of_must_be_positive_integers(value: Any) -> None:
    assert refusal(CHAT, chat(n=value), max_n=8).param == "n"
    assert refusal(COMPLETIONS, {"model": "m", "prompt": "x", "n": value}, max_n=8).param == "n"
    assert refusal(COMPLETIONS, {"model": "m", "prompt": "x", "best_of": value}, max_n=8).param == "best_of"


def test_null_n_means_one() -> None:
    assert shape(CHAT, chat(n=None)).body["n"] is None


# -- mandatory system prompt ---------------------------------------------------


def test_chat_gets_the_system_prompt_first() -> None:
    messages = [{"role": "system", "content": "client"}, {"role": "user", "content": "hi"}]
    shaped = shape(CHAT, chat(messages=messages), system_prompt="Be safe.")
    assert shaped.body["messages"] == [{"role": "system", "content": "Be safe."}, *messages]


@pytest.mark.parametrize("messages", [None, [], "hi", {"role": "user"}])
def test_chat_messages_must_be_a_non_empty_list(messages: Any) -> None:
    body = {"model": "m"} if messages is None else {"model": "m", "messages": messages}
    for params in ({}, {"system_prompt": "S"}):
        error = refusal(CHAT, body, **params)
        assert (error.reason, error.param) == ("invalid_parameter", "messages")


def test_completion_prompts_get_the_system_prompt() -> None:
    body = {"model": "m", "prompt": "Once"}
    assert shape(COMPLETIONS, body, system_prompt="S").body["prompt"] == "S\n\nOnce"
    shaped = shape(COMPLETIONS, {**body, "prompt": ["a", "b"]}, system_prompt="S")
    assert shaped.body["prompt"] == ["S\n\na", "S\n\nb"]


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]]])
def test_token_prompts_cannot_take_a_system_prompt(prompt: list[Any]) -> None:
    error = refusal(COMPLETIONS, {"model": "m", "prompt": prompt}, system_prompt="S")
    assert (error.reason, error.param) == ("invalid_parameter", "prompt")
    assert "token prompts cannot be combined" in error.message
    assert shape(COMPLETIONS, {"model": "m", "prompt": prompt}).body["prompt"] == prompt  # fine without one


@pytest.mark.parametrize("prompt", [None, 5, {"text": "x"}, ["a", 1], ["a", None]])
def test_malformed_prompts_are_refused_under_a_system_prompt(prompt: Any) -> None:
    body = {"model": "m"} if prompt is None else {"model": "m", "prompt": prompt}
    assert refusal(COMPLETIONS, body, system_prompt="S").param == "prompt"


def test_responses_input_gets_the_system_prompt_first() -> None:
    """In ``input``, not ``instructions``: the Response object (streamed too) returns instructions to the client."""
    system = {"type": "message", "role": "system", "content": "S"}
    body = {"model": "m", "input": "hi", "instructions": "Mine"}
    shaped = shape(RESPONSES, body, system_prompt="S").body
    assert shaped["input"] == [system, {"type": "message", "role": "user", "content": "hi"}]
    assert shaped["instructions"] == "Mine"
    items = [{"role": "user", "content": "a"}]
    assert shape(RESPONSES, {"model": "m", "input": items}, system_prompt="S").body["input"] == [system, *items]
    assert refusal(RESPONSES, {"model": "m", "input": 5}, system_prompt="S").param == "input"


def test_completions_echo_is_refused_under_a_system_prompt() -> None:
    body = {"model": "m", "prompt": "Once", "echo": True}
    assert refusal(COMPLETIONS, body, system_prompt="S").param == "echo"
    assert shape(COMPLETIONS, body).body["echo"] is True  # fine without one


def test_no_system_prompt_leaves_prompts_alone() -> None:
    assert shape(COMPLETIONS, {"model": "m", "prompt": "x"}).body["prompt"] == "x"
    assert "instructions" not in shape(RESPONSES, {"model": "m", "input": "x"}).body
    assert shape(CHAT, chat()).body["messages"] == USER_HI


# -- streaming and usage -------------------------------------------------------


@pytest.mark.parametrize(("route", "prompt_field"), [(CHAT, "messages"), (COMPLETIONS, "prompt")])
def test_streams_are_forced_to_carry_usage(route: str, prompt_field: str) -> None:
    body = {"model": "m", prompt_field: USER_HI if route == CHAT else "x", "stream": True}
    shaped = shape(route, body)
    assert shaped.stream is True and shaped.include_usage is False
    assert shaped.body["stream_options"] == {"include_usage": True}

    shaped = shape(route, {**body, "stream_options": {"include_usage": True}})
    assert shaped.include_usage is True and shaped.body["stream_options"] == {"include_usage": True}

    extra = {"include_usage": False, "continuous_usage_stats": True}
    shaped = shape(route, {**body, "stream_options": extra})
    assert shaped.include_usage is False
    assert shaped.body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert extra == {"include_usage": False, "continuous_usage_stats": True}


def test_non_streams_report_no_usage_chunk_and_are_not_touched() -> None:
    for stream in (False, None):
        shaped = shape(CHAT, chat(stream=stream))
        assert shaped.stream is False and shaped.include_usage is False
        assert "stream_options" not in shaped.body
    assert shape(CHAT, chat()).stream is False


def test_responses_streams_always_carry_usage() -> None:
    shaped = shape(RESPONSES, {"model": "m", "input": "x", "stream": True})
    assert shaped.stream is True and shaped.include_usage is True
    assert "stream_options" not in shaped.body
    assert shape(RESPONSES, {"model": "m", "input": "x"}).include_usage is False


def test_anthropic_streams_carry_usage_and_are_forwarded_without_a_field_the_route_does_not_take() -> None:
    """Found by the property test (test_params_properties.py): a streamed /v1/messages was forwarded with an
    OpenAI ``stream_options`` added, a field Anthropic's API does not have and the allow-list refuses from a client."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    shaped = shape(MESSAGES, body)
    assert shaped.stream is True and shaped.include_usage is True  # message_delta always carries it
    assert "stream_options" not in shaped.body and set(shaped.body) <= ROUTES[MESSAGES].fields


@pytest.mark.parametrize("value", ["true", 1, 0, "yes", []])
def test_stream_must_be_a_boolean(value: Any) -> None:
    error = refusal(CHAT, chat(stream=value))
    assert (error.reason, error.param) == ("invalid_parameter", "stream")


@pytest.mark.parametrize("value", ["x", [], 1, True, {"include_usage": "yes"}, {"include_usage": 1}])
def test_stream_options_must_be_an_object_with_a_boolean_include_usage(value: Any) -> None:
    error = refusal(CHAT, chat(stream=True, stream_options=value))
    assert (error.reason, error.param) == ("invalid_parameter", "stream_options")


def test_shaped_carries_prompt_limit_and_timeout() -> None:
    shaped = shape(CHAT, chat(), max_prompt_tokens=100, request_timeout_s=2.5)
    assert (shaped.max_prompt_tokens, shaped.timeout_s) == (100, 2.5)
    shaped = shape(CHAT, chat())
    assert (shaped.max_prompt_tokens, shaped.timeout_s) == (None, None)


# -- reservation ---------------------------------------------------------------


def test_chat_reservation_is_prompt_bytes_plus_template_plus_output() -> None:
    # [[{"role":"user","content":"hi"}],null,null] is 44 bytes; one message: 16 template tokens.
    assert size(USER_HI, None, None) == 44
    assert shape(CHAT, chat(max_tokens=100)).reserve_tokens == 44 + 16 + 100


def test_reservation_multiplies_output_by_n() -> None:
    assert shape(CHAT, chat(max_tokens=100, n=3), max_n=3).reserve_tokens == 60 + 3 * 100


def test_reservation_takes_the_larger_of_both_chat_output_fields() -> None:
    assert shape(CHAT, chat(max_tokens=100, max_completion_tokens=30)).reserve_tokens == 60 + 100


def test_reservation_uses_the_clamped_output_or_the_cap() -> None:
    assert shape(CHAT, chat(max_tokens=5000), max_output_tokens=200).reserve_tokens == 60 + 200
    assert shape(CHAT, chat(), max_output_tokens=200).reserve_tokens == 60 + 200


def test_reservation_falls_back_to_max_model_len_without_any_output_limit() -> None:
    # out = max_model_len (1000); min(1000 * 1, 60 + 1000) = 1000
    assert shape(CHAT, chat(), max_model_len=1000).reserve_tokens == 1000
    # n=2: min(1000 * 2, 60 + 1000 * 2) = 2000
    assert shape(CHAT, chat(n=2), max_model_len=1000, max_n=2).reserve_tokens == 2000


def test_reservation_never_exceeds_max_model_len_per_sequence() -> None:
    assert shape(CHAT, chat(max_tokens=4000), max_model_len=1000).reserve_tokens == 1000
    long = [{"role": "user", "content": "x" * 5000}]
    assert shape(CHAT, chat(messages=long, max_tokens=10), max_model_len=1000).reserve_tokens == 1000


def test_max_prompt_tokens_caps_the_prompt_bound() -> None:
    long = [{"role": "user", "content": "x" * 5000}]
    assert shape(CHAT, chat(messages=long, max_tokens=10), max_prompt_tokens=300).reserve_tokens == 300 + 10
    # a cap above the estimate changes nothing
    assert shape(CHAT, chat(max_tokens=10), max_prompt_tokens=300).reserve_tokens == 60 + 10


def test_the_system_prompt_counts_toward_the_prompt() -> None:
    messages = [{"role": "system", "content": "Be safe."}, *USER_HI]
    expected = size(messages, None, None) + 2 * TEMPLATE_TOKENS + 100
    assert shape(CHAT, chat(max_tokens=100), system_prompt="Be safe.").reserve_tokens == expected


def test_tools_count_toward_the_prompt() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    expected = size(USER_HI, tools, None) + TEMPLATE_TOKENS + TOOLS_TOKENS + 10
    assert shape(CHAT, chat(tools=tools, max_tokens=10)).reserve_tokens == expected


def test_non_ascii_text_is_counted_in_utf8_bytes() -> None:
    # "héllo" is 6 bytes; ["héllo",null] 15 bytes, + 16 template tokens + 10 output
    assert shape(COMPLETIONS, {"model": "m", "prompt": "héllo", "max_tokens": 10}).reserve_tokens == 15 + 16 + 10


def test_completion_reservation_with_best_of_and_batched_prompts() -> None:
    body = {"model": "m", "prompt": "hello", "max_tokens": 10}
    assert shape(COMPLETIONS, body).reserve_tokens == 14 + 16 + 10
    assert shape(COMPLETIONS, {**body, "n": 1, "best_of": 3}, max_n=3).reserve_tokens == 30 + 3 * 10
    # two prompts are two sequences per choice: ["a","b"] in [["a","b"],null] is 16 bytes, 2 * 16 template
    batch = {**body, "prompt": ["a", "b"], "n": 2}
    assert shape(COMPLETIONS, batch, max_n=2).reserve_tokens == 16 + 2 * 16 + 2 * 2 * 10


def test_a_batch_is_bounded_by_max_batch_and_weighs_its_prompts() -> None:
    prompts = {"model": "m", "prompt": ["p"] * 256, "max_tokens": 5}
    refused = refusal(COMPLETIONS, prompts)  # the default max_batch is 32
    assert (refused.status, refused.param, refused.code) == (400, "prompt", "invalid_value")
    assert "holds 256 prompts" in refused.message and "at most 32" in refused.message
    assert shape(COMPLETIONS, prompts, max_batch=256).weight == 256
    assert shape(COMPLETIONS, {**prompts, "prompt": [[1, 2], [3]]}).weight == 2  # token prompts
    assert shape(COMPLETIONS, {**prompts, "prompt": [1, 2, 3]}).weight == 1  # one prompt of token ids
    assert shape(COMPLETIONS, {**prompts, "prompt": "one"}).weight == 1
    assert refusal(EMBEDDINGS, {"model": "m", "input": ["x"] * 3}, max_batch=2).param == "input"
    assert shape(EMBEDDINGS, {"model": "m", "input": ["x"] * 3}, max_batch=3).weight == 3
    assert shape(CHAT, chat()).weight == 1


def test_the_prompt_part_of_the_reservation_is_kept_apart() -> None:
    shaped = shape(COMPLETIONS, {"model": "m", "prompt": "hello", "max_tokens": 10})
    assert (shaped.prompt_tokens, shaped.reserve_tokens) == (14 + 16, 14 + 16 + 10)
    embedded = shape(EMBEDDINGS, {"model": "m", "input": ["a", "b"]})
    assert embedded.prompt_tokens == embedded.reserve_tokens == 11 + 2 * 16
    assert shape(CHAT, chat(max_tokens=100)).prompt_tokens == 44 + 16


def test_responses_reservation() -> None:
    # [null,"hello",null] is 19 bytes, one input message
    assert shape(RESPONSES, {"model": "m", "input": "hello", "max_output_tokens": 10}).reserve_tokens == 19 + 16 + 10
    items = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    body = {"model": "m", "input": items, "instructions": "Hi", "max_output_tokens": 10}
    assert shape(RESPONSES, body).reserve_tokens == size("Hi", items, None) + 3 * 16 + 10


def test_responses_with_a_stored_prompt_reserve_the_prompt_ceiling() -> None:
    # previous_response_id and conversation are refused (test_params_levers); a stored prompt template is not.
    body = {"model": "m", "input": "hi", "max_output_tokens": 10, "prompt": {"id": "pmpt_1"}}
    assert shape(RESPONSES, body, max_model_len=1000).reserve_tokens == 1000
    assert shape(RESPONSES, body, max_prompt_tokens=300).reserve_tokens == 300 + 10


def test_images_reserve_the_prompt_ceiling() -> None:
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]
    body = chat(messages=[{"role": "user", "content": parts}], max_tokens=10)
    assert shape(CHAT, body, max_prompt_tokens=2000).reserve_tokens == 2000 + 10
    assert shape(CHAT, body, max_model_len=3000).reserve_tokens == 3000


def test_embeddings_reserve_the_input_only() -> None:
    # [["a","b"]] is 11 bytes; two inputs: 2 * 16 template tokens
    assert shape(EMBEDDINGS, {"model": "m", "input": ["a", "b"]}).reserve_tokens == 11 + 2 * 16
    assert shape(EMBEDDINGS, {"model": "m", "input": "a"}).reserve_tokens == size("a") + 16
    assert shape(EMBEDDINGS, {"model": "m", "input": [1, 2, 3]}).reserve_tokens == size([1, 2, 3]) + 16


def test_embeddings_reservation_is_capped_per_input() -> None:
    one = {"model": "m", "input": "x" * 5000}
    assert shape(EMBEDDINGS, one, max_model_len=512).reserve_tokens == 512
    many = {"model": "m", "input": ["x" * 5000] * 3}
    assert shape(EMBEDDINGS, many, max_model_len=512).reserve_tokens == 3 * 512
    assert shape(EMBEDDINGS, many, max_prompt_tokens=100).reserve_tokens == 3 * 100


# -- the input is never mutated ------------------------------------------------


def test_the_input_body_is_never_mutated() -> None:
    bodies = [
        (CHAT, chat(messages=[{"role": "user", "content": "hi"}], max_tokens=5000, stream=True)),
        (CHAT, chat(stream=True, stream_options={"include_usage": False})),
        (COMPLETIONS, {"model": "m", "prompt": ["a", "b"], "max_tokens": 5000, "stream": True}),
        (COMPLETIONS, {"model": "m", "prompt": "a"}),
        (RESPONSES, {"model": "m", "input": "x", "instructions": "I", "max_output_tokens": 5000, "stream": True}),
        (EMBEDDINGS, {"model": "m", "input": ["a"]}),
    ]
    params = {"max_output_tokens": 10, "system_prompt": "S", "max_n": 2}
    for route, body in bodies:
        before = copy.deepcopy(body)
        shaped = shape(route, body, cache_salt="salt", **params)
        assert body == before, route
        assert shaped.body is not body


def test_shaped_is_frozen() -> None:
    shaped = shape(CHAT, chat())
    with pytest.raises(AttributeError):
        shaped.stream = True  # type: ignore[misc]


def test_every_opaque_part_name_holds_a_word_the_regex_prefilter_looks_for() -> None:
    names = re.findall(r"[a-z_]+", _OPAQUE_PARTS.pattern.removeprefix('"(?:'))
    assert len(names) >= 9
    for name in names:
        assert any(word in name for word in ("image", "audio", "video", "file")), name


def test_the_prompt_encoder_encodes_as_the_json_encoder_does() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    values: list[Any] = [[{"b": 'é\n"\\', "a": [1, 2.5, None, True]}, "x\ud800", 10**30], [float("nan"), {1: 2}]]
    values.append([Opaque()])  # not JSON: default=str
    for value in values:
        assert _encode(value) == _ENCODER.encode(value)
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        _encode(circular)
