"""The engine client wrapper that checks a prompt against the context and the policy.

The per-request values it reads are context variables set by the engine's
``call`` around the serving layer's call.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.renderers.inputs.preprocess import extract_prompt_len
from vllm.v1.engine.async_llm import AsyncLLM

# The output-token budget the client asked for, seen by the engine guard below.
requested_max_tokens: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "paddockrequested_max_tokens", default=None
)
# The governance policy's cap on prompt tokens for this request (None: the context only).
trace_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "paddocktrace_headers", default=None
)
max_prompt_tokens: contextvars.ContextVar[int | None] = contextvars.ContextVar("paddockmax_prompt_tokens", default=None)


class ContextGuard:
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
        requested = requested_max_tokens.get()
        cap = max_prompt_tokens.get()
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
        if (headers := trace_headers.get()) is not None:
            kwargs["trace_headers"] = headers  # the replica's span becomes the parent of vLLM's
        return self._engine.generate(prompt, sampling_params, request_id, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        if (headers := trace_headers.get()) is not None:
            kwargs["trace_headers"] = headers
        return self._engine.encode(*args, **kwargs)


@contextlib.contextmanager
def scoped(values: dict[contextvars.ContextVar[Any], Any]) -> Iterator[None]:
    """Set each context variable for the duration of the block."""
    tokens = [(var, var.set(value)) for var, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


async def scoped_stream(
    source: AsyncIterator[Any], values: dict[contextvars.ContextVar[Any], Any]
) -> AsyncIterator[Any]:
    """``source`` with ``values`` set while each of its steps runs.

    vLLM's Responses server renders the prompt and calls ``generate`` lazily, inside the stream it
    returns: the guard must still see this request's values then, after ``call`` has returned.
    """
    iterator = source.__aiter__()
    while True:
        with scoped(values):
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
        yield item
