"""The route table: one record per governed API route, used by every layer.

The ingress routes by it (which model task a route needs), the replica and the
engine dispatch by its operation, governance shapes requests by its fields,
and observability names metrics and spans after it. A new API is one new
record here (and its handler in the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Operation = Literal["chat", "completions", "responses", "embeddings", "messages", "count_tokens"]
Task = Literal["generate", "embed"]
Dialect = Literal["openai", "anthropic"]  # whose error bodies and stream events a route answers with

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"  # Anthropic's Messages API
COUNT_TOKENS = "/v1/messages/count_tokens"

# The API port's own GET routes, answered by the ingress (never forwarded): the probes and the document need
# no key, the model list does.
HEALTH = "/health"  # liveness
READY = "/ready"  # readiness
RAY_PROXY_HEALTH = "/-/healthz"  # answered like Ray Serve's proxy, for KubeRay's Serve-aware probes
OPENAPI = "/openapi.json"  # the OpenAPI document of the port (``service.protocol.openapi``)
MODELS = "/v1/models"  # and ``/v1/models/{id}``
PROBES = (HEALTH, READY, RAY_PROXY_HEALTH, OPENAPI)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


@dataclass(frozen=True, slots=True)
class Route:
    """One API route and everything the layers need to know of its wire shape."""

    path: str
    operation: Operation  # the engine's name for it, also the metrics' ``route`` label
    task: Task  # the model task it needs
    genai_operation: str  # ``gen_ai.operation.name`` (OpenTelemetry GenAI conventions)
    fields: frozenset[str]  # the API's documented request fields (OpenAI's, or Anthropic's)
    output_fields: tuple[str, ...] = ()  # bound output per choice; the first is set to the cap when none is given
    choice_fields: tuple[str, ...] = ()  # how many sequences per prompt (``n``, ``best_of``)
    batched_field: str | None = None  # the field holding a list of prompts, on routes that take one
    prompt_fields: tuple[str, ...] = ()  # fields whose text reaches the model as prompt tokens
    streams: bool = True  # takes ``stream``
    dialect: Dialect = "openai"  # the error and event shapes it answers in


ROUTES: dict[str, Route] = {
    route.path: route
    for route in (
        Route(
            CHAT,
            "chat",
            "generate",
            "chat",
            _words(
                "model messages audio frequency_penalty function_call functions logit_bias logprobs"
                " max_completion_tokens max_tokens metadata modalities n parallel_tool_calls prediction"
                " presence_penalty prompt_cache_key prompt_cache_retention reasoning_effort response_format"
                " safety_identifier seed service_tier stop store stream stream_options temperature tool_choice tools"
                " top_logprobs top_p user verbosity web_search_options"
            ),
            output_fields=("max_completion_tokens", "max_tokens"),
            choice_fields=("n",),
            prompt_fields=("messages", "tools", "functions"),
        ),
        Route(
            COMPLETIONS,
            "completions",
            "generate",
            "text_completion",
            _words(
                "model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed"
                " stop stream stream_options suffix temperature top_p user"
            ),
            output_fields=("max_tokens",),
            choice_fields=("best_of", "n"),
            batched_field="prompt",
            prompt_fields=("prompt", "suffix"),
        ),
        Route(
            RESPONSES,
            "responses",
            "generate",
            "chat",  # the Responses API is a chat in GenAI terms
            _words(
                "model input instructions max_output_tokens max_tool_calls metadata parallel_tool_calls"
                " previous_response_id reasoning store stream stream_options temperature text tool_choice tools"
                " top_logprobs top_p truncation user background include prompt prompt_cache_key"
                " prompt_cache_retention safety_identifier service_tier conversation"
            ),
            output_fields=("max_output_tokens",),
            prompt_fields=("instructions", "input", "tools"),
        ),
        Route(
            EMBEDDINGS,
            "embeddings",
            "embed",
            "embeddings",
            _words("model input dimensions encoding_format user"),
            batched_field="input",
            prompt_fields=("input",),
            streams=False,
        ),
        Route(
            MESSAGES,
            "messages",
            "generate",
            "chat",
            _words(
                "model messages max_tokens cache_control metadata output_config service_tier stop_sequences stream"
                " system temperature thinking tool_choice tools top_k top_p"
            ),
            output_fields=("max_tokens",),
            prompt_fields=("system", "messages", "tools"),
            dialect="anthropic",
        ),
        Route(
            COUNT_TOKENS,
            "count_tokens",
            "generate",
            "count_tokens",
            _words("model messages cache_control output_config system thinking tool_choice tools"),
            prompt_fields=("system", "messages", "tools"),
            streams=False,
            dialect="anthropic",
        ),
    )
}

# OpenAI's documented request fields, per route path (the OpenAI-dialect routes).
FIELDS: dict[str, frozenset[str]] = {path: route.fields for path, route in ROUTES.items() if route.dialect == "openai"}
