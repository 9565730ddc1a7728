"""Paddock's OpenAPI 3.1 documents: what each port accepts, and every answer it can give.

``GET /openapi.json`` serves them with no key: the API port's (:func:`api_document`) and the admin port's
(:func:`admin_document`). Both are made from the tables the servers route by, so no route is served
undocumented: the API paths from :data:`~service.protocol.routes.ROUTES` (each request schema has exactly the
route's allow-listed ``fields``; a field without a schema here is a ``KeyError`` when the document is made, at
the ingress's start) and the port's own GET routes; the admin paths from the admin API's own dispatch table.

* **Requests**: an honest, loose account of the OpenAI (and Anthropic) request shapes: the fields governance
  lets through, with the types and ranges Paddock or the engine hold them to. Not a copy of vLLM's models:
  nested objects are open, and vLLM's extensions (a tenant's ``allowed_fields``) are not listed.
* **Answers**: success bodies loosely (the engine words them); every error status Paddock can answer, with
  OpenAI's error object, or Anthropic's on the Anthropic routes. The front door (``service.serve.door``)
  answers before any route is known, so its statuses (400 for malformed HTTP, 408, 431, 503 at the connection
  cap) may come in OpenAI's shape on any route. 500 is not documented: Paddock never means to answer it.
* **Model ids are never listed**: the document needs no key, and only a key that may use a model learns
  that it exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

from service.protocol.errors import ANTHROPIC_ERROR_TYPES, MAX_MESSAGE_CHARS, MAX_PARAM_CHARS
from service.protocol.routes import (
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS,
    EMBEDDINGS,
    HEALTH,
    MESSAGES,
    MODELS,
    OPENAPI,
    RAY_PROXY_HEALTH,
    READY,
    RESPONSES,
    ROUTES,
    Route,
    Task,
)

Schema = dict[str, Any]
KILL_SCOPES = ("all", "model", "tenant", "key")  # what the admin API's disable and enable take

# -- building blocks ------------------------------------------------------------------------------

_STRING: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_OBJECT: Schema = {"type": "object"}
_STRINGS: Schema = {"type": "array", "items": _STRING}
_INT1: Schema = {"type": "integer", "minimum": 1}
_TOKENS: Schema = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}


def _any_of(*schemas: Schema) -> Schema:
    return {"anyOf": list(schemas)}


def _enum(*values: object) -> Schema:
    return {"enum": list(values)}


def _number(low: float, high: float) -> Schema:
    return {"type": "number", "minimum": low, "maximum": high}


def _obj(required: Iterable[str] = (), /, **properties: Schema) -> Schema:
    """An open object (other keys allowed: the engine reads them) with these properties."""
    schema: Schema = {"type": "object", "properties": properties}
    if required := list(required):
        schema["required"] = required
    return schema


def _all(**properties: Schema) -> Schema:
    """An object with every one of these properties (others allowed)."""
    return _obj(properties, **properties)


def _closed(**properties: Schema) -> Schema:
    """An object with exactly these properties."""
    return {**_all(**properties), "additionalProperties": False}


def _typed(*kinds: str, **properties: Schema) -> Schema:
    """An open object with a string ``type`` (one of ``kinds`` when given)."""
    return _obj(["type"], type=_enum(*kinds) if kinds else _STRING, **properties)


def _array(items: Schema, min_items: int = 0) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if min_items:
        schema["minItems"] = min_items
    return schema


# -- request fields -------------------------------------------------------------------------------

_OUTPUT = {**_INT1, "description": "Capped by the key's max_output_tokens (clamped, or a 400 under `reject`)."}
_CHOICES = {**_INT1, "description": "At most the key's max_n (400 otherwise)."}
_PROMPT = _any_of(_STRING, _array(_STRING, 1), _TOKENS, _array(_TOKENS, 1))
_PART = _typed(text=_STRING)  # a content part: text, image_url, input_audio, file, ...
_FUNCTION = _obj(["name"], name=_STRING, description=_STRING, parameters=_OBJECT, strict=_BOOL)
_NOT_STORED = "Paddock stores no responses: only an absent, null or false value passes (400 otherwise)."

# Fields of the same name mean the same on every route, unless _PER_ROUTE says otherwise.
_COMMON: dict[str, Schema] = {
    "model": {
        "type": "string",
        "minLength": 1,
        "description": "A model id or alias; `GET /v1/models` lists the key's.",
    },
    "stream": _BOOL,
    "stream_options": _obj(include_usage=_BOOL),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "logit_bias": {"type": "object", "additionalProperties": _number(-100, 100)},
    "max_tokens": _OUTPUT,
    "max_completion_tokens": _OUTPUT,
    "max_output_tokens": _OUTPUT,
    "n": _CHOICES,
    "best_of": _CHOICES,
    "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    "stop": _any_of(_STRING, _STRINGS),
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    "metadata": {"type": "object", "additionalProperties": _STRING},
    "parallel_tool_calls": _BOOL,
    "reasoning_effort": {**_STRING, "description": "Lowered to the key's max_reasoning_effort."},
    "store": _BOOL,
    "service_tier": _STRING,
    "user": _STRING,
    "safety_identifier": _STRING,
    "prompt_cache_key": _STRING,
    "prompt_cache_retention": _STRING,
    "echo": {**_BOOL, "description": "Refused (400) for a key with a mandatory system prompt."},
    "suffix": _STRING,
    "instructions": _STRING,
    "truncation": _enum("auto", "disabled"),
    "max_tool_calls": _INT1,
    "include": _STRINGS,
    "prompt": _OBJECT,
    "text": _obj(format=_typed(), verbosity=_STRING),
    "dimensions": _INT1,
    "encoding_format": _enum("float", "base64"),
    "audio": _OBJECT,
    "prediction": _OBJECT,
    "modalities": _array(_enum("text", "audio")),
    "verbosity": _enum("low", "medium", "high"),
    "web_search_options": {**_OBJECT, "description": "Refused (400) unless the key's builtin_tools has web_search."},
    "functions": _array(_FUNCTION),
    "function_call": _any_of(_enum("none", "auto"), _obj(["name"], name=_STRING)),
    "response_format": _typed("text", "json_object", "json_schema", json_schema=_OBJECT),
    # Anthropic's
    "system": _any_of(_STRING, _array(_typed("text", text=_STRING))),
    "stop_sequences": _STRINGS,
    "top_k": {"type": "integer", "minimum": 0},
    "thinking": _typed("enabled", "disabled", "adaptive", budget_tokens=_INT1),
    "cache_control": _typed(),
    "output_config": _OBJECT,
}
_CHAT_MESSAGE = _obj(
    ["role"],
    role=_enum("system", "developer", "user", "assistant", "tool", "function"),
    content=_any_of(_STRING, _array(_PART), {"type": "null"}),
    name=_STRING,
    tool_calls=_array(_typed("function", id=_STRING, function=_obj(name=_STRING, arguments=_STRING))),
    tool_call_id=_STRING,
    reasoning_content=_STRING,
)
_ANTHROPIC_MESSAGE = _obj(["role", "content"], role=_enum("user", "assistant"), content=_any_of(_STRING, _array(_PART)))
_ANTHROPIC = {
    "messages": _array(_ANTHROPIC_MESSAGE, 1),
    "tools": _array(_obj(["name"], name=_STRING, description=_STRING, input_schema=_OBJECT, type=_STRING)),
    "tool_choice": _typed("auto", "any", "tool", "none", name=_STRING),
}
_PER_ROUTE: dict[str, dict[str, Schema]] = {
    CHAT: {
        "messages": {**_array(_CHAT_MESSAGE, 1), "description": "The key's system prompt, if any, goes first."},
        "tools": _array(_typed("function", "custom", function=_FUNCTION)),
        "tool_choice": _any_of(_enum("none", "auto", "required"), _typed("function", function=_obj(name=_STRING))),
        "logprobs": _BOOL,
    },
    COMPLETIONS: {"prompt": _PROMPT, "logprobs": {"type": "integer", "minimum": 0, "maximum": 5}},
    RESPONSES: {
        "input": _any_of(_STRING, _array(_obj(type=_STRING, role=_STRING))),
        "tools": {
            **_array(_typed()),
            "description": "Built-in tools are refused (400) unless the key's builtin_tools lists them.",
        },
        "tool_choice": _any_of(_enum("none", "auto", "required"), _typed()),
        "reasoning": _obj(effort=_STRING, summary=_STRING),
        "store": {**_enum(False, None), "description": _NOT_STORED},
        "background": {**_enum(False, None), "description": _NOT_STORED},
        "previous_response_id": {"type": "null", "description": _NOT_STORED},
        "conversation": {"type": "null", "description": _NOT_STORED},
    },
    EMBEDDINGS: {"input": {**_PROMPT, "description": "At most the key's max_batch inputs (400 otherwise)."}},
    MESSAGES: {**_ANTHROPIC, "temperature": _number(0, 1), "metadata": _obj(user_id=_STRING)},
    COUNT_TOKENS: _ANTHROPIC,
}
_REQUIRED = {
    CHAT: ("model", "messages"),
    COMPLETIONS: ("model", "prompt"),
    RESPONSES: ("model", "input"),
    EMBEDDINGS: ("model", "input"),
    MESSAGES: ("model", "messages", "max_tokens"),
    COUNT_TOKENS: ("model", "messages"),
}


def request_schema(route: Route) -> Schema:
    """The body ``route`` accepts: its allow-listed fields, no others (a field without a schema: ``KeyError``)."""
    own = _PER_ROUTE.get(route.path, {})
    properties = {name: own[name] if name in own else _COMMON[name] for name in sorted(route.fields)}
    return {
        "type": "object",
        "required": list(_REQUIRED[route.path]),
        "properties": properties,
        "additionalProperties": False,
        "description": "Fields beyond these (vLLM's extensions) are refused (400 `unknown_parameter`) unless the "
        "key's `allowed_fields` lists them.",
    }


# -- answers --------------------------------------------------------------------------------------

_MESSAGE = {"type": "string", "maxLength": MAX_MESSAGE_CHARS}  # client input quoted in it is elided beyond
_OPENAI_ERROR = _closed(
    error=_closed(
        message=_MESSAGE,
        type=_STRING,
        param={"type": ["string", "null"], "maxLength": MAX_PARAM_CHARS},
        code={"type": ["string", "null"]},
    )
)
_ANTHROPIC_ERROR = _closed(
    type={"const": "error"}, error=_closed(type=_enum(*sorted(ANTHROPIC_ERROR_TYPES)), message=_MESSAGE)
)
_WHY = {
    400: "Malformed HTTP or JSON, a field of the wrong type or value or not allowed, a credential header sent "
    "twice, a prompt beyond the model's context.",
    401: "No key, or one that is unknown, expired or disabled.",
    403: "The key's tenant is disabled.",
    404: "An unknown model, or one the key may not use (answered alike); an unknown route.",
    408: "The request's headers or body did not arrive in time.",
    413: "A body over the limit, decided from its Content-Length before it is read.",
    429: "A rate, concurrency or token limit, a spent budget, or too many failed authentications.",
    431: "The request line and headers are too large, or there are too many header fields.",
    503: "Overloaded, no replica ready, shutting down, disabled by an operator, the state store unreachable, "
    "or the port at its connection cap.",
    504: "The model replica sent nothing within the upstream read timeout.",
    529: "Overloaded (Anthropic's status for what the OpenAI routes answer 503).",
}
_DOOR = (400, 408, 431, 503)  # the front door's answers, on any route (OpenAI's shape), without x-request-id
_API_ERRORS = (400, 401, 403, 404, 408, 413, 429, 431, 503, 504)
_ANTHROPIC_ERRORS = (*_API_ERRORS, 529)
_REQUEST_ID = {"description": "This request's id: the client's own if sane, a new one otherwise.", "schema": _STRING}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _answer(description: str, content: Schema, request_id: bool = True) -> Schema:
    return {
        "description": description,
        "content": content,
        "headers": {"x-request-id": {**_REQUEST_ID, "required": request_id}},
    }


_SCHEMAS = {"OpenAIError": _OPENAI_ERROR, "AnthropicError": _ANTHROPIC_ERROR}
_OPENAI_REF, _ANTHROPIC_REF = ({"$ref": f"#/components/schemas/{name}"} for name in _SCHEMAS)


def _errors(statuses: Iterable[int], dialect: str = "openai") -> dict[str, Schema]:
    answers: dict[str, Schema] = {}
    for status in statuses:
        door = status in _DOOR
        if dialect == "openai":
            schema = _OPENAI_REF
        else:  # the door answers before any route is known: in OpenAI's shape
            schema = _any_of(_ANTHROPIC_REF, _OPENAI_REF) if door else _ANTHROPIC_REF
        answers[str(status)] = _answer(_WHY[status], _json(schema), request_id=not door)
    return answers


_LOOSE_RESULT = _obj(
    id=_STRING, object=_STRING, created={"type": "integer"}, model=_STRING, choices={"type": "array"}, usage=_OBJECT
)
_RESULTS: dict[str, Schema] = {
    CHAT: _LOOSE_RESULT,
    COMPLETIONS: _LOOSE_RESULT,
    RESPONSES: _obj(id=_STRING, object=_STRING, output={"type": "array"}, usage=_OBJECT),
    EMBEDDINGS: _obj(object=_STRING, data={"type": "array"}, model=_STRING, usage=_OBJECT),
    MESSAGES: _obj(id=_STRING, type=_STRING, role=_STRING, content={"type": "array"}, usage=_OBJECT),
    COUNT_TOKENS: _obj(["input_tokens"], input_tokens={"type": "integer", "minimum": 0}),
}


# One server-sent event of a stream (``stream: true``); its ``data`` is a JSON chunk, or ``[DONE]``.
_EVENT = {**_obj(["data"], event=_STRING, data=_STRING, id=_STRING), "description": "A server-sent event."}


def _route_operation(route: Route) -> Schema:
    content = _json(_RESULTS[route.path])
    if route.streams:
        content["text/event-stream"] = {"schema": _EVENT}
    anthropic = route.dialect == "anthropic"
    return {
        "operationId": route.operation,
        "summary": f"{route.genai_operation} ({route.dialect})",
        "security": [{"bearer": []}, {"x-api-key": []}] if anthropic else [{"bearer": []}],
        "requestBody": {"required": True, "content": _json(request_schema(route))},
        "responses": {
            "200": _answer("The engine's answer (a stream of events when `stream` is true).", content),
            **_errors(_ANTHROPIC_ERRORS if anthropic else _API_ERRORS, route.dialect),
        },
    }


_MODEL = _all(
    id=_STRING,
    object={"const": "model"},
    created={"type": "integer"},
    owned_by=_STRING,
    aliases=_STRINGS,
    task=_enum(*get_args(Task)),
    status=_all(state=_enum("ready", "starting", "scaled_to_zero"), replicas={"type": "integer", "minimum": 0}),
)


def _get(operation_id: str, summary: str, answer: Schema, statuses: Iterable[int], keyed: bool) -> Schema:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "security": [{"bearer": []}] if keyed else [],
            "responses": {"200": answer, **_errors(statuses)},
        }
    }


def _document_of(title: str, paths: dict[str, Schema], description: str) -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


def _health(summary: str) -> Schema:
    return _get(
        "health", summary, _answer("It answers.", _json(_obj(["status"], status={"const": "ok"}))), _DOOR, False
    )


def _openapi_path(port: str) -> Schema:
    answer = _answer("This document.", _json(_obj(["openapi", "paths"], openapi=_STRING, paths=_OBJECT)))
    return _get("openapi", f"The OpenAPI document of the {port} port.", answer, _DOOR, False)


def api_document() -> Schema:
    """The API port's document: the governed routes (from the route table) and the port's own GET routes."""
    keyed = (400, 401, 403, 404, 408, 429, 431, 503)
    plain = _answer("Ray Serve's proxy's answer.", {"text/plain": {"schema": {"const": "success"}}})
    paths: dict[str, Schema] = {
        HEALTH: _health("Liveness: the ingress process answers."),
        READY: _get(
            "ready",
            "Readiness: this ingress accepts traffic (it does not wait for every model).",
            _answer("Ready.", _json(_obj(["status"], status={"const": "ready"}))),
            _DOOR,
            False,
        ),
        RAY_PROXY_HEALTH: _get("ray_proxy_health", "Readiness as KubeRay's probes read it.", plain, _DOOR, False),
        OPENAPI: _openapi_path("API"),
        MODELS: _get(
            "list_models",
            "The models this key may use.",
            _answer("The models.", _json(_obj(["object", "data"], object={"const": "list"}, data=_array(_MODEL)))),
            keyed,
            True,
        ),
        f"{MODELS}/{{model}}": {
            **_get("get_model", "One model, by id or alias.", _answer("The model.", _json(_MODEL)), keyed, True),
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {**_STRING, "minLength": 1}}],
        },
    }
    paths.update({path: {"post": _route_operation(route)} for path, route in ROUTES.items()})
    return _document_of(
        "Paddock",
        paths,
        "Governed OpenAI- and Anthropic-compatible inference. Every route but the probes and this document needs "
        "a key (`Authorization: Bearer pk-…`; the Anthropic routes also take `x-api-key`).",
    )


# -- the admin port -------------------------------------------------------------------------------

_KILL_TARGET = _obj(
    ["scope"],
    scope=_enum(*KILL_SCOPES),
    id={**_STRING, "description": "The model, tenant or key id (not for `all`); an unknown one is a 404."},
    reason=_STRING,
)
_ADMIN_ERRORS = (400, 401, 404, 408, 431, 503)
_KEY = _obj(
    ["id", "tenant", "enabled", "disabled_by_admin"],
    id=_STRING,
    tenant=_STRING,
    enabled=_BOOL,
    disabled_by_admin=_BOOL,
    expires={"type": ["string", "null"]},
    created={"type": ["string", "null"]},
    last_used={"type": ["string", "null"]},
)
_COUNT = {"type": "integer"}
_USAGE_ROW = _all(
    day=_STRING,
    tenant=_STRING,
    key_id=_STRING,
    model=_STRING,
    requests=_COUNT,
    prompt_tokens=_COUNT,
    completion_tokens=_COUNT,
)


def _kill(done: str) -> Schema:
    answer = _obj([done, "version"], **{done: _STRING, "version": {"type": "integer"}})
    return {
        "summary": f"{done.capitalize()} a scope (every ingress applies it within a second).",
        "requestBody": {"required": True, "content": _json(_KILL_TARGET)},
        "responses": {"200": _answer(f"{done.capitalize()}.", _json(answer)), **_errors(_ADMIN_ERRORS)},
    }


def _admin_get(summary: str, answer: Schema) -> Schema:
    return {"summary": summary, "responses": {"200": answer, **_errors(_ADMIN_ERRORS)}}


_USAGE_QUERY = [
    {"name": "since", "in": "query", "schema": _STRING, "description": "First day (YYYY-MM-DD)."},
    {"name": "until", "in": "query", "schema": _STRING, "description": "Last day (YYYY-MM-DD)."},
    {"name": "format", "in": "query", "schema": _enum("json", "csv")},
]
_ADMIN: dict[tuple[str, str], Schema] = {
    ("GET", "/admin/v1/kills"): _admin_get(
        "What is disabled, by whom and why.",
        _answer("The kills.", _json(_obj(["version", "disabled"], version={"type": "integer"}, disabled=_OBJECT))),
    ),
    ("POST", "/admin/v1/disable"): _kill("disabled"),
    ("POST", "/admin/v1/enable"): _kill("enabled"),
    ("GET", "/admin/v1/keys"): _admin_get(
        "Every key with its tenant, state and last use.", _answer("The keys.", _json(_obj(["keys"], keys=_array(_KEY))))
    ),
    ("GET", "/admin/v1/usage"): {
        **_admin_get(
            "Requests and tokens per day, tenant, key and model.",
            _answer(
                "The usage (CSV with `format=csv`).",
                {**_json(_obj(["usage"], usage=_array(_USAGE_ROW))), "text/csv": {"schema": _STRING}},
            ),
        ),
        "parameters": _USAGE_QUERY,
    },
}


def admin_document(operations: Iterable[tuple[str, str]]) -> Schema:
    """The admin port's document: ``/health``, this document, and the admin API's ``(method, path)`` operations.

    Every operation needs the admin token; one without a schema here is a ``KeyError`` (documented or not served).
    """
    paths: dict[str, Schema] = {HEALTH: _health("Liveness."), OPENAPI: _openapi_path("admin")}
    for method, path in operations:
        operation = {**_ADMIN[(method, path)], "security": [{"bearer": []}]}
        paths.setdefault(path, {})[method.lower()] = {"operationId": path.rsplit("/", 1)[-1], **operation}
    return _document_of(
        "Paddock admin API",
        paths,
        "The kill switch, keys and usage. Every route but /health and this document "
        "needs the admin token (`Authorization: Bearer …`), never a tenant key.",
    )
