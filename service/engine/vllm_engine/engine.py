"""The vLLM adapter: vLLM's ``AsyncLLM`` and vLLM's own OpenAI serving layer for one model.

It runs ``AsyncLLM`` in this process (vLLM starts its EngineCore and worker
processes) and reuses vLLM's protocol models, chat templates, tool and
reasoning parsers and the chat, completion, responses and embedding servers,
exactly as ``vllm serve`` wires them. What Paddock adds: OpenAI's error shape,
a 400 instead of a silent clamp when prompt + max tokens exceed the context,
unknown-role rejection, and an in-band error when a stream fails after its 200.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any

import pydantic
from ray import is_initialized as ray_is_initialized
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
from vllm.exceptions import VLLMClientError
from vllm.renderers.chat_utils import ChatTemplateConfig, load_chat_template
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.usage.usage_lib import UsageContext
from vllm.utils.gc_utils import freeze_gc_heap
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

from service.config.schema import ModelConfig
from service.engine.base import CallContext, EngineDead, JSONResult, Result, StreamResult
from service.engine.engine_spans import wrap_do_tracing
from service.engine.vllm_engine.anthropic import REQUEST_MODELS as ANTHROPIC_REQUEST_MODELS
from service.engine.vllm_engine.anthropic import anthropic_handlers
from service.engine.vllm_engine.args import engine_args, engine_env
from service.engine.vllm_engine.guard import (
    ContextGuard,
    max_prompt_tokens,
    requested_max_tokens,
    scoped,
    scoped_stream,
    trace_headers,
)
from service.engine.vllm_engine.integrity import SpecialTokenEscaper
from service.engine.vllm_engine.results import (
    check_roles,
    client_error,
    in_band_errors,
    opened,
    reasoning_as_content_field,
    reasoning_as_content_fields,
    requested_tokens,
    to_api_error,
    validation_error,
)
from service.engine.vllm_engine.warmup import warm_up
from service.protocol import errors
from service.protocol.routes import Operation

REQUEST_MODELS: dict[Operation, pydantic.TypeAdapter[Any]] = {
    "chat": pydantic.TypeAdapter(ChatCompletionRequest),
    "completions": pydantic.TypeAdapter(CompletionRequest),
    "responses": pydantic.TypeAdapter(ResponsesRequest),
    "embeddings": pydantic.TypeAdapter(EmbeddingRequest),  # a union of request shapes
    **ANTHROPIC_REQUEST_MODELS,  # messages, count_tokens
}


class VLLMEngine:
    """One model served by vLLM's AsyncLLM and vLLM's OpenAI serving classes."""

    def __init__(
        self, model: ModelConfig, path: Path, otlp: tuple[str, str] | None = None, *, warmup: bool = True
    ) -> None:
        """``otlp``: the (traces endpoint, protocol) of vLLM's own spans, when tracing is on;
        ``warmup``: serve each expensive path once in ``start`` (see ``warmup.py``)."""
        self._warmup = warmup
        self.model_id = model.id
        self._model = model
        self._path = path
        self._otlp = otlp
        self._engine: AsyncLLM | None = None
        self._handlers: dict[Operation, Any] = {}
        self.warmup_s: dict[str, float] = {}  # seconds per warmed path
        self._escaper = SpecialTokenEscaper([])
        self._renames_reasoning = model.reasoning_parser is not None and model.reasoning_field == "reasoning_content"

    async def start(self) -> None:
        # vLLM's Responses store keeps every response in this process, shared by all tenants: it stays off
        # (governance refuses store, background and previous_response_id instead).
        os.environ["VLLM_ENABLE_RESPONSES_API_STORE"] = "0"
        if self._otlp is not None:  # vLLM's exporter reads only the traces-specific protocol variable
            os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", self._otlp[1])
        args = engine_args(self._model, self._path, self._otlp[0] if self._otlp else None)
        # The engine's processes (EngineCore, workers) inherit this process's environment.
        os.environ.update(engine_env(self._model, os.sched_getaffinity(0), os.environ))
        # Engine metrics go through Ray's metrics agent (as Ray Serve LLM does): `vllm:x` is exported
        # as `ray_vllm_x` by each node's agent, with the replica's id as a label.
        loggers = [RayPrometheusStatLogger] if ray_is_initialized() else None
        self._engine = AsyncLLM.from_engine_args(
            args, usage_context=UsageContext.OPENAI_API_SERVER, stat_loggers=loggers
        )
        if self._otlp is not None:
            wrap_do_tracing(self._engine.output_processor)
        client = ContextGuard(self._engine)
        base_paths = [BaseModelPath(name=name, model_path=str(self._path)) for name in self._model.names]
        models = OpenAIServingModels(client, base_paths)
        await models.init_static_loras()
        self._handlers = self._build_handlers(client, models)
        self._escaper = SpecialTokenEscaper.of(self._engine.get_tokenizer())
        if self._warmup:
            self.warmup_s = await warm_up(self._model, self.call)
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
            **anthropic_handlers(client, models, renderer, options),  # messages, count_tokens
        }

    async def call(self, operation: Operation, body: dict[str, object], ctx: CallContext) -> Result:
        handler = self._handlers.get(operation)
        if handler is None:
            raise errors.invalid_request(f"The model `{self.model_id}` does not support this API.", param="model")
        if not ctx.special_tokens:
            body = self._escaper.body(operation, body)
        if operation == "chat":
            check_roles(body)
        try:
            request = REQUEST_MODELS[operation].validate_python(body)
        except pydantic.ValidationError as error:
            raise validation_error(error) from None
        except VLLMClientError as error:  # raised by vLLM's own validators, e.g. a structural tag
            raise client_error(error, body) from None
        values: dict[contextvars.ContextVar[Any], Any] = {
            requested_max_tokens: requested_tokens(request),
            max_prompt_tokens: ctx.max_prompt_tokens,
            trace_headers: ctx.headers or None,
        }
        with scoped(values):
            try:
                result = await handler(request, None)
            except Exception as error:  # noqa: BLE001 - vLLM raises its own exception types
                result = create_error_response(error)
        return await self._result(result, operation, body, values)

    async def _result(
        self, result: Any, operation: Operation, request: dict[str, object], values: dict[Any, Any]
    ) -> Result:
        if isinstance(result, ErrorResponse):
            raise to_api_error(result, request)
        rename = operation == "chat" and self._renames_reasoning
        if isinstance(result, pydantic.BaseModel):
            raw = result.model_dump_json(by_alias=operation == "responses").encode()
            return JSONResult(200, reasoning_as_content_field(raw) if rename else raw)
        body = getattr(result, "body", None)
        if isinstance(body, bytes):  # a starlette JSONResponse (the embedding server)
            return JSONResult(int(getattr(result, "status_code", 200)), body)
        source = result
        if operation == "responses":
            # The Responses server renders and generates inside its stream: the guard's values go with it,
            # and the stream is opened to its first real event, so a refused prompt is still a 400.
            source = await opened(scoped_stream(_convert_stream_to_sse_events(result), values), request)
        events = in_band_errors(source)
        return StreamResult(reasoning_as_content_fields(events) if rename else events)

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
