"""The request parameter policy: what one request may ask of a model.

:func:`shape_request` checks a parsed request body against a key's
:class:`~service.governance.policy.Parameters` and returns the body to forward
(a modified shallow copy; the input is never mutated) with the worst-case
token reservation the store admits it against. Plain Python, no web framework:
a :class:`~service.governance.refusal.Refusal` is already in OpenAI's error shape.

Only OpenAI's documented request fields pass; anything else (vLLM extensions
such as ``cache_salt``, ``priority``, ``top_k``, ...) is refused as an unknown
parameter unless the tenant's ``allowed_fields`` names it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from service.governance.policy import REASONING_EFFORTS, Parameters
from service.governance.refusal import Refusal
from service.governance.thinking import cap_anthropic_effort, fit_thinking_budget
from service.protocol.routes import CHAT, COMPLETIONS, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES, ROUTES, Route

# Responses fields that pull in prompt text stored server-side, of unknown size (the first two are refused).
_STORED_CONTEXT = ("previous_response_id", "conversation", "prompt")
# Content parts whose token count is not bounded by their JSON size (an image URL of 40 bytes
# can cost a thousand tokens): a prompt holding one is bounded by the per-prompt ceiling instead.
_OPAQUE_PARTS = re.compile(
    r'"(?:image_url|input_image|input_audio|audio_url|video_url|input_file|file|image_embeds|image_pil)"'
)
TEMPLATE_TOKENS = 16  # chat-template allowance per message (role markers, BOS, separators)
TOOLS_TOKENS = 256  # allowance for the instructions a chat template wraps around tool schemas

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None without CPython's C accelerator


def _encode(value: list[Any]) -> str:
    """``_ENCODER.encode(value)``, without the set-up ``JSONEncoder`` redoes in Python on every call.

    The C encoder is made as ``JSONEncoder.iterencode`` makes it (a fresh circular-reference memo each time).
    """
    if _C_MAKE_ENCODER is None:
        return _ENCODER.encode(value)
    encoder = _C_MAKE_ENCODER({}, str, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return "".join(encoder(value, 0))


@dataclass(frozen=True, slots=True)
class Shaped:
    """A request as governance forwards it."""

    body: dict[str, Any]  # the request to forward (a modified copy; never the input)
    reserve_tokens: int  # worst-case tokens this request can consume (prompt + all outputs)
    max_prompt_tokens: int | None  # for the replica to enforce with the real tokenizer
    timeout_s: float | None
    stream: bool
    include_usage: bool  # the client asked for the usage chunk (stream_options.include_usage)
    weight: int = 1  # prompts in the request (a batch): it counts as this many requests for rate and concurrency
    prompt_tokens: int = 0  # the prompt part of reserve_tokens (charged when the engine reports no usage)
    special_tokens: bool = False  # the replica reads control tokens typed into content as control tokens


def shape_request(
    route: str, body: dict[str, Any], params: Parameters, *, max_model_len: int, cache_salt: str | None
) -> Shaped:
    """Check ``body`` against ``params`` and shape it for forwarding; raise :class:`Refusal` if it may not pass.

    ``reserve_tokens`` is a worst-case bound computed without a tokenizer:

    * prompt: the UTF-8 byte length of the JSON-encoded prompt-bearing fields (messages, tools, functions /
      prompt, suffix / input, instructions, tools; the mandatory system prompt included), since a byte-level BPE token
      covers at least one byte, plus ``TEMPLATE_TOKENS`` per message or prompt (and ``TOOLS_TOKENS`` when tools
      are given) for the chat template. It is capped per prompt at ``max_prompt_tokens`` and ``max_model_len``;
      a prompt whose size JSON does not bound (images, audio, video, files, or a Responses request continuing
      stored context) is taken at that cap.
    * output: ``max_output_tokens`` per choice (the requested value after clamping, else the key's cap, else
      ``max_model_len``), times ``max(n, best_of)`` choices, times the number of prompts in a batched legacy
      completion. No sequence outlives ``max_model_len``, which bounds the total again.
    * embeddings: the prompt bound alone (capped per input).

    The store settles on the engine's real usage afterwards, so over-reserving only delays a request near a
    limit; it never over-charges a request whose usage the engine reports.

    A batch (a legacy completion's ``prompt`` list, an embeddings ``input`` list) holds at most
    ``params.max_batch`` prompts, and its ``weight`` (the number of prompts) is what it counts for the
    requests-per-minute and concurrency limits: 256 prompts in one request are 256 requests.
    """
    spec = ROUTES.get(route)
    if spec is None:
        raise ValueError(f"no parameter policy for route {route!r}")
    _check_fields(body, spec.fields, params.allowed_fields)
    shaped = dict(body)
    if route == RESPONSES:
        _check_stored_state(shaped)
    _check_builtin_tools(route, shaped, params.builtin_tools)
    if params.max_reasoning_effort is not None:
        _cap_reasoning_effort(route, shaped, params.max_reasoning_effort)
    stream, include_usage = _shape_stream(spec, shaped)
    out = _shape_output(spec, shaped, params, max_model_len)
    if route == MESSAGES:
        fit_thinking_budget(shaped)
    choices = _check_choices(spec, shaped, params.max_n)
    _apply_system_prompt(route, shaped, params.system_prompt)
    if cache_salt is not None and route != EMBEDDINGS and shaped.get("cache_salt") is None:
        shaped["cache_salt"] = cache_salt
    weight = _check_batch(spec, shaped, params.max_batch)
    max_prompt = params.max_prompt_tokens
    reserve, prompt = _reserve(spec, shaped, max_prompt, max_model_len, out, choices, weight)
    # positional: faster
    special = params.special_tokens == "allow"
    return Shaped(shaped, reserve, max_prompt, params.request_timeout_s, stream, include_usage, weight, prompt, special)


def _invalid(param: str, message: str) -> Refusal:
    return Refusal("invalid_parameter", message, param=param)


def _check_fields(body: dict[str, Any], fields: frozenset[str], allowed: tuple[str, ...]) -> None:
    if fields.issuperset(body):
        return
    unknown = body.keys() - fields
    if unknown and allowed:
        unknown.difference_update(allowed)
    if unknown:
        name = str(min(unknown, key=str))
        raise Refusal("unknown_parameter", f"Unrecognized request argument supplied: {name}", param=name)


def _check_stored_state(shaped: dict[str, Any]) -> None:
    """Paddock keeps no responses: refuse what needs a stored one, rather than answer without it."""
    if shaped.get("background"):
        raise _invalid(
            "background",
            "Background responses are not available: Paddock stores no responses. "
            "Send the request without `background` (stream it to see progress).",
        )
    if shaped.get("store"):
        raise _invalid(
            "store",
            "Stored responses are not available: Paddock stores no responses. "
            "Send `store: false` (or leave it out) and keep the conversation on your side.",
        )
    for name in ("previous_response_id", "conversation"):
        if shaped.get(name) is not None:
            raise _invalid(
                name,
                f"`{name}` is not available: Paddock stores no responses or conversations. "
                "Send the earlier turns in `input`.",
            )


_FUNCTION_TOOLS = frozenset({"function", "custom"})


def _check_builtin_tools(route: str, shaped: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Built-in tools (search, code, MCP, ...) act outside the model: only a tenant's policy turns one on."""
    if route == CHAT and shaped.get("web_search_options") is not None and "web_search" not in allowed:
        raise _invalid("web_search_options", "Web search is not enabled for this key.")
    tools = shaped.get("tools") if route == RESPONSES else None
    if not isinstance(tools, list):
        return
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind not in _FUNCTION_TOOLS and kind not in allowed:
            raise _invalid(f"tools[{index}].type", f"The built-in tool {kind!r} is not enabled for this key.")


def _cap_reasoning_effort(route: str, shaped: dict[str, Any], cap: str) -> None:
    """Lower the request's reasoning effort to ``cap``; a request naming none gets ``min(cap, medium)``."""
    if route == CHAT:
        holder, name = shaped, "reasoning_effort"
    elif route in (MESSAGES, COUNT_TOKENS):
        cap_anthropic_effort(shaped, cap)
        return
    elif route == RESPONSES:
        given = shaped.get("reasoning")
        if given is not None and not isinstance(given, dict):
            raise _invalid("reasoning", "reasoning must be an object.")
        holder, name = dict(given or {}), "effort"
        shaped["reasoning"] = holder
    else:
        return
    effort = holder.get(name)
    limit = REASONING_EFFORTS.index(cap)
    if effort is None:
        holder[name] = REASONING_EFFORTS[min(limit, REASONING_EFFORTS.index("medium"))]
    elif effort not in REASONING_EFFORTS:
        raise _invalid(name, f"{name} must be one of {', '.join(REASONING_EFFORTS)}.")
    elif REASONING_EFFORTS.index(effort) > limit:
        holder[name] = cap


def _shape_stream(spec: Route, shaped: dict[str, Any]) -> tuple[bool, bool]:
    """Validate ``stream``/``stream_options``; make chat and completion streams carry usage for accounting.

    Returns whether the request streams, and whether its client gets the usage event (so it is not dropped).
    """
    if not spec.streams:
        return False, False
    stream = shaped.get("stream")
    if stream is None:
        stream = False
    elif type(stream) is not bool:
        raise _invalid("stream", "stream must be a boolean.")
    options = shaped.get("stream_options")
    asked = False
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid("stream_options", "stream_options must be an object.")
        given = options.get("include_usage")
        if given is not None and type(given) is not bool:
            raise _invalid("stream_options", "stream_options.include_usage must be a boolean.")
        asked = bool(given)
    if not stream:
        return False, False
    if spec.path == RESPONSES or "stream_options" not in spec.fields:
        # Their streams always carry usage (Responses in response.completed, Anthropic in message_delta), and a
        # field the route does not take is never added to what is forwarded.
        return True, True
    shaped["stream_options"] = {**(options or {}), "include_usage": True}
    return True, asked


def _shape_output(spec: Route, shaped: dict[str, Any], params: Parameters, max_model_len: int) -> int:
    """Validate and cap the output fields; return the most tokens one choice may generate."""
    names = spec.output_fields
    if not names:
        return 0
    cap = params.max_output_tokens
    out: int | None = None
    for name in names:
        value = shaped.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _invalid(name, f"{name} must be an integer of at least 1.")
        if cap is not None and value > cap:
            if params.output_tokens_over_cap == "reject":
                raise _invalid(name, f"{name} is {value} but this key allows at most {cap} output tokens.")
            shaped[name] = value = cap
        out = value if out is None else max(out, value)
    if out is None:
        if cap is None:
            return max_model_len
        shaped[names[0]] = out = cap
    return min(out, max_model_len)


def _check_choices(spec: Route, shaped: dict[str, Any], max_n: int) -> int:
    """Validate ``best_of`` and ``n`` against the key's ``max_n``; return the number of sequences per prompt."""
    choices = 1
    for name in spec.choice_fields:
        value = shaped.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _invalid(name, f"{name} must be an integer of at least 1.")
        if value > max_n:
            raise _invalid(name, f"{name} is {value} but this key allows at most {max_n}.")
        choices = max(choices, value)
    return choices


def _apply_system_prompt(route: str, shaped: dict[str, Any], prompt: str | None) -> None:
    if route == CHAT:
        messages = shaped.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages", "messages must be a non-empty list.")
        if prompt:
            shaped["messages"] = [{"role": "system", "content": prompt}, *messages]
    elif not prompt:
        return
    elif route in (MESSAGES, COUNT_TOKENS):
        shaped["system"] = _prefixed_system(shaped.get("system"), prompt)
    elif route == COMPLETIONS:
        if shaped.get("echo"):  # the echoed prompt would carry the mandatory system prompt back
            raise _invalid("echo", "echo is not available for this key (it has a mandatory system prompt).")
        shaped["prompt"] = _prefixed_prompt(shaped.get("prompt"), prompt + "\n\n")
    elif route == RESPONSES:
        shaped["input"] = _system_first(shaped.get("input"), prompt)


def _system_first(given: Any, prompt: str) -> list[Any]:
    """A Responses ``input`` led by the mandatory system message.

    Not prefixed to ``instructions``: the Response object returns those to the client, streamed too.
    """
    system = {"type": "message", "role": "system", "content": prompt}
    if isinstance(given, str):
        return [system, {"type": "message", "role": "user", "content": given}]
    if isinstance(given, list):
        return [system, *given]
    raise _invalid("input", "input must be a string or a list of input items.")


def _prefixed_system(system: Any, prompt: str) -> str | list[Any]:
    """An Anthropic ``system`` (a string or text blocks) with the key's mandatory prompt first."""
    if not system:
        return prompt
    if isinstance(system, str):
        return f"{prompt}\n\n{system}"
    if isinstance(system, list):
        return [{"type": "text", "text": prompt}, *system]
    raise _invalid("system", "system must be a string or a list of content blocks.")


def _prefixed_prompt(value: Any, prefix: str) -> str | list[str]:
    if isinstance(value, str):
        return prefix + value
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return [prefix + item for item in value]
        if all(isinstance(item, int | list) for item in value):
            raise _invalid("prompt", "token prompts cannot be combined with this key's mandatory system prompt.")
    raise _invalid("prompt", "prompt must be a string or a list of strings.")


def _batch_size(value: Any) -> int:
    """How many prompts a legacy-completion ``prompt`` or an embeddings ``input`` holds."""
    if isinstance(value, list) and value and isinstance(value[0], str | list):
        return len(value)
    return 1


def _check_batch(spec: Route, shaped: dict[str, Any], max_batch: int) -> int:
    """The number of prompts the request holds (1 unless the route takes a batch), at most ``max_batch``."""
    name = spec.batched_field
    if name is None:
        return 1
    prompts = _batch_size(shaped.get(name))
    if prompts > max_batch:
        raise _invalid(name, f"{name} holds {prompts} prompts but this key allows at most {max_batch} per request.")
    return prompts


def _reserve(
    spec: Route, shaped: dict[str, Any], max_prompt: int | None, max_model_len: int, out: int, n: int, prompts: int
) -> tuple[int, int]:
    """The worst-case tokens of the whole request, and of its prompt alone."""
    route = spec.path
    per_prompt = max_model_len if max_prompt is None else min(max_prompt, max_model_len)
    ceiling = per_prompt * prompts
    if route == RESPONSES and any(shaped.get(name) is not None for name in _STORED_CONTEXT):
        bound = ceiling
    else:
        text = _encode(list(map(shaped.get, spec.prompt_fields)))
        # Every name _OPAQUE_PARTS matches holds one of these words: the regex runs only if it may match.
        maybe_opaque = "image" in text or "audio" in text or "video" in text or "file" in text
        if maybe_opaque and _OPAQUE_PARTS.search(text):
            bound = ceiling
        else:
            size = len(text) if text.isascii() else len(text.encode())
            bound = min(ceiling, size + _template_tokens(route, shaped, prompts))
    if route == EMBEDDINGS:
        return bound, bound
    sequences = n * prompts
    return min(max_model_len * sequences, bound + out * sequences), bound


def _template_tokens(route: str, shaped: dict[str, Any], prompts: int) -> int:
    if route == CHAT:
        units = len(shaped["messages"])
        tools = shaped.get("tools") or shaped.get("functions")
    elif route == RESPONSES:
        given = shaped.get("input")
        units = (len(given) if isinstance(given, list) else 1) + (1 if shaped.get("instructions") else 0)
        tools = shaped.get("tools")
    else:
        return TEMPLATE_TOKENS * prompts
    return TEMPLATE_TOKENS * units + (TOOLS_TOKENS if tools else 0)
