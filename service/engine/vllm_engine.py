"""The vLLM adapter: the only module that imports vLLM.

It runs vLLM's ``AsyncLLM`` in this process (vLLM starts its EngineCore and
worker processes) and reuses vLLM's own OpenAI serving layer — protocol
models, chat templates, tool and reasoning parsers, the chat, completion,
responses and embedding servers — exactly as ``vllm serve`` wires them.
What Paddock adds here: OpenAI's error shape, a 400 instead of a silent
clamp when prompt + max tokens exceed the context, unknown-role rejection,
and an in-band error when a stream fails after its 200.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
from ray import is_initialized as ray_is_initialized
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.openai.responses.api_router import _convert_stream_to_sse_events
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
from vllm.entrypoints.pooling.embed.serving import ServingEmbedding
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.exceptions import VLLMValidationError
from vllm.renderers.chat_utils import ChatTemplateConfig, load_chat_template
from vllm.renderers.inputs.preprocess import extract_prompt_len
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.usage.usage_lib import UsageContext
from vllm.utils.gc_utils import freeze_gc_heap
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

from service.config.schema import ModelConfig
from service.engine.base import CallContext, EngineDead, JSONResult, Result, StreamResult
from service.engine.engine_spans import wrap_do_tracing
from service.protocol import errors
from service.protocol.routes import Operation

log = logging.getLogger(__name__)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
REQUEST_MODELS: dict[Operation, pydantic.TypeAdapter[Any]] = {
    "chat": pydantic.TypeAdapter(ChatCompletionRequest),
    "completions": pydantic.TypeAdapter(CompletionRequest),
    "responses": pydantic.TypeAdapter(ResponsesRequest),
    "embeddings": pydantic.TypeAdapter(EmbeddingRequest),  # a union of request shapes
}
# The output-token budget the client asked for, seen by the engine guard below.
_requested_max_tokens: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "paddock_requested_max_tokens", default=None
)
# The governance policy's cap on prompt tokens for this request (None: the context only).
_trace_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "paddock_trace_headers", default=None
)
_max_prompt_tokens: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "paddock_max_prompt_tokens", default=None
)


class EngineArgsError(ValueError):
    """An ``engine_args`` key vLLM does not know."""


def engine_args(model: ModelConfig, path: Path, otlp_traces_endpoint: str | None = None) -> AsyncEngineArgs:
    """vLLM engine arguments for one model entry (validated against vLLM's own fields)."""
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(model.engine_args) - known)
    if unknown:
        raise EngineArgsError(f"models[{model.id}].engine_args: unknown vLLM engine argument(s): {', '.join(unknown)}")
    tp = model.resources.tensor_parallel_size
    args: dict[str, Any] = {
        "model": str(path),
        "served_model_name": list(model.names),
        "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code,
        "max_model_len": model.max_model_len,
        "tensor_parallel_size": tp,
        "runner": "pooling" if model.task == "embed" else "generate",
        "enforce_eager": True,
        "disable_log_stats": False,
    }
    if tp > 1:
        args["distributed_executor_backend"] = "ray"
    if model.kv_cache_memory is not None:
        args["kv_cache_memory_bytes"] = int(model.kv_cache_memory)
    elif model.task == "embed":
        args["kv_cache_memory_bytes"] = 64 * 1024 * 1024
    if otlp_traces_endpoint:
        args["otlp_traces_endpoint"] = otlp_traces_endpoint
    args.update(model.engine_args)
    return AsyncEngineArgs(**args)


class _ContextGuard:
    """Wraps the engine client: prompt + requested max tokens beyond the context is a 400.

    vLLM clamps ``max_tokens`` to what fits; OpenAI clients expect
    ``context_length_exceeded`` instead. The check runs when the serving layer
    calls ``generate`` — before the response starts — with the prompt's real
    token count.
    """

    def __init__(self, engine: AsyncLLM) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kwargs: Any) -> Any:
        requested = _requested_max_tokens.get()
        cap = _max_prompt_tokens.get()
        if cap is not None:
            prompt_len = extract_prompt_len(self._engine.model_config, prompt)
            if prompt_len > cap:
                raise VLLMValidationError(
                    f"This request's prompt has {prompt_len} tokens; your policy allows at most {cap}. "
                    "Please reduce the length of the messages.",
                    parameter="messages",
                    value=prompt_len,
                )
        if requested is not None:
            limit = self._engine.model_config.max_model_len
            prompt_len = extract_prompt_len(self._engine.model_config, prompt)
            if prompt_len + requested > limit:
                raise VLLMValidationError(
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {prompt_len + requested} tokens ({prompt_len} in the messages, "
                    f"{requested} in the completion). Please reduce the length of the messages "
                    "or completion.",
                    parameter="max_tokens",
                    value=requested,
                )
        if (headers := _trace_headers.get()) is not None:
            kwargs["trace_headers"] = headers  # the replica's span becomes the parent of vLLM's
        return self._engine.generate(prompt, sampling_params, request_id, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        if (headers := _trace_headers.get()) is not None:
            kwargs["trace_headers"] = headers
        return self._engine.encode(*args, **kwargs)


def _requested_tokens(request: pydantic.BaseModel) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = getattr(request, name, None)
        if isinstance(value, int):
            return value
    return None


def _check_roles(body: dict[str, object]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in CHAT_ROLES:
            raise errors.invalid_request(
                f"Invalid role {role!r}: expected one of {', '.join(sorted(CHAT_ROLES))}.",
                param=f"messages[{index}].role",
            )


def _validation_error(error: pydantic.ValidationError) -> errors.APIError:
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and p[:1].isupper())]
    param = ".".join(loc).replace(".[", "[") or None
    return errors.invalid_request(f"Invalid request: {param}: {first['msg']}", param=param)


def to_api_error(response: ErrorResponse) -> errors.APIError:
    """vLLM's ErrorResponse (type names, integer codes) in OpenAI's terms."""
    error = response.error
    status = int(error.code) if str(error.code).isdigit() else 500
    message = error.message
    if "maximum context length" in message or "your policy allows at most" in message:
        return errors.context_length_exceeded(message) if status == 400 else errors.internal()
    if status == 404 and error.param == "model":
        return errors.APIError(404, message.split(" Valid")[0], code="model_not_found", param="model")
    mapped = errors.from_status(status, message)
    mapped.param = error.param
    if status < 500:
        mapped.type = "invalid_request_error"
        mapped.code = mapped.code if status in (404, 413) else None
    return mapped


def _sse_error(chunk: bytes) -> bytes:
    """Normalise vLLM's in-band stream error event to OpenAI's shape (unchanged if unreadable)."""
    try:
        data = json.loads(chunk.removeprefix(b"data: "))
        status = int(data["error"].get("code") or 500)
        message = str(data["error"].get("message") or "stream failed")
    except (ValueError, KeyError, TypeError, AttributeError):
        return chunk
    error = errors.APIError(status, message, type="server_error" if status >= 500 else "invalid_request_error")
    return b"data: " + error.body() + b"\n\n"


async def _stream(source: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    done = False
    try:
        async for item in source:
            chunk = item.encode() if isinstance(item, str) else bytes(item)
            if chunk.startswith(b'data: {"error"'):
                chunk = _sse_error(chunk)
            done = done or chunk.endswith(b"data: [DONE]\n\n")
            yield chunk
    except Exception as error:  # noqa: BLE001 - the 200 is gone: end in band
        log.exception("stream failed after it started")
        if not done:
            failure = errors.internal(f"The stream failed: {type(error).__name__}.")
            yield failure.sse_event()


class VLLMEngine:
    """One model served by vLLM's AsyncLLM and vLLM's OpenAI serving classes."""

    def __init__(self, model: ModelConfig, path: Path, otlp: tuple[str, str] | None = None) -> None:
        """``otlp``: the (traces endpoint, protocol) of vLLM's own spans, when tracing is on."""
        self.model_id = model.id
        self._model = model
        self._path = path
        self._otlp = otlp
        self._engine: AsyncLLM | None = None
        self._handlers: dict[Operation, Any] = {}

    async def start(self) -> None:
        if self._otlp is not None:  # vLLM's exporter reads only the traces-specific protocol variable
            os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", self._otlp[1])
        args = engine_args(self._model, self._path, self._otlp[0] if self._otlp else None)
        # Engine metrics go through Ray's metrics agent (as Ray Serve LLM does): `vllm:x` is exported
        # as `ray_vllm_x` by each node's agent, with the replica's id as a label.
        loggers = [RayPrometheusStatLogger] if ray_is_initialized() else None
        self._engine = AsyncLLM.from_engine_args(
            args, usage_context=UsageContext.OPENAI_API_SERVER, stat_loggers=loggers
        )
        if self._otlp is not None:
            wrap_do_tracing(self._engine.output_processor)
        client = _ContextGuard(self._engine)
        base_paths = [BaseModelPath(name=name, model_path=str(self._path)) for name in self._model.names]
        models = OpenAIServingModels(client, base_paths)
        await models.init_static_loras()
        self._handlers = self._build_handlers(client, models)
        # As `vllm serve` does: keep the start-up heap out of full GC collections,
        # whose pauses otherwise land on streams in flight.
        freeze_gc_heap()

    def _build_handlers(self, client: Any, models: Any) -> dict[Operation, Any]:
        if self._model.task == "embed":
            embedding = ServingEmbedding(client, models, request_logger=None, chat_template_config=ChatTemplateConfig())
            return {"embeddings": embedding}
        return self._generation_handlers(client, models)

    def _generation_handlers(self, client: Any, models: Any) -> dict[Operation, Any]:
        template = load_chat_template(self._model.chat_template)
        options: dict[str, Any] = {
            "chat_template": template,
            "chat_template_content_format": "auto",
            "enable_auto_tools": self._model.tool_call_parser is not None,
            "tool_parser": self._model.tool_call_parser,
            "reasoning_parser": self._model.reasoning_parser or "",
        }
        assert self._engine is not None
        renderer = OnlineRenderer(self._engine.model_config, self._engine.renderer, request_logger=None, **options)
        renderer.warmup()
        chat = OpenAIServingChat(client, models, "assistant", online_renderer=renderer, request_logger=None, **options)
        completion = OpenAIServingCompletion(client, models, online_renderer=renderer, request_logger=None)
        responses = OpenAIServingResponses(client, models, renderer, request_logger=None, **options)
        return {
            "chat": chat.create_chat_completion,
            "completions": completion.create_completion,
            "responses": responses.create_responses,
        }

    async def call(self, operation: Operation, body: dict[str, object], ctx: CallContext) -> Result:
        handler = self._handlers.get(operation)
        if handler is None:
            raise errors.invalid_request(f"The model `{self.model_id}` does not support this API.", param="model")
        if operation == "chat":
            _check_roles(body)
        try:
            request = REQUEST_MODELS[operation].validate_python(body)
        except pydantic.ValidationError as error:
            raise _validation_error(error) from None
        token = _requested_max_tokens.set(_requested_tokens(request))
        cap = _max_prompt_tokens.set(ctx.max_prompt_tokens)
        traced = _trace_headers.set(ctx.headers or None)
        try:
            result = await handler(request, None)
        except Exception as error:  # noqa: BLE001 - vLLM raises its own exception types
            result = create_error_response(error)
        finally:
            _requested_max_tokens.reset(token)
            _max_prompt_tokens.reset(cap)
            _trace_headers.reset(traced)
        return self._result(result, operation)

    def _result(self, result: Any, operation: Operation) -> Result:
        if isinstance(result, ErrorResponse):
            raise to_api_error(result)
        if isinstance(result, pydantic.BaseModel):
            return JSONResult(200, result.model_dump_json(by_alias=operation == "responses").encode())
        body = getattr(result, "body", None)
        if isinstance(body, bytes):  # a starlette JSONResponse (the embedding server)
            return JSONResult(int(getattr(result, "status_code", 200)), body)
        source = _convert_stream_to_sse_events(result) if operation == "responses" else result
        return StreamResult(_stream(source))

    def status(self) -> dict[str, object]:
        if self._engine is None:
            return {"running": False}
        return {"running": True, "unfinished_requests": self._engine.get_num_unfinished_requests()}

    async def check_health(self) -> None:
        if self._engine is None:
            return
        try:
            await self._engine.check_health()
        except Exception as error:  # noqa: BLE001 - any failure here means a dead engine
            raise EngineDead(str(error) or type(error).__name__) from error

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
