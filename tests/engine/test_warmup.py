"""The replica's warm-up: which paths it serves itself, and that one failing path does not stop the rest."""

from __future__ import annotations

from service.config.schema import ModelConfig
from service.engine.base import CallContext, JSONResult, Result, StreamResult
from service.engine.vllm_engine.warmup import warm_up, warmup_requests
from service.protocol import errors
from service.protocol.routes import Operation


def model(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"id": "m", "source": {"path": "/m"}, "kv_cache_memory": "64MiB", **fields})


def test_generation_models_warm_logprobs_structured_outputs_and_streams() -> None:
    names = [name for name, _, _ in warmup_requests(model())]
    assert {"chat", "chat stream", "chat logprobs", "completion logprobs", "structured output"} <= set(names)
    assert "tool call" not in names
    tools = warmup_requests(model(tool_call_parser="hermes"))
    assert [body.get("tool_choice") for name, _, body in tools if name == "tool call"] == ["required"]
    assert [op for _, op, _ in warmup_requests(model(task="embed"))] == ["embeddings"]


async def test_a_failing_path_is_skipped_and_streams_are_drained() -> None:
    drained: list[bytes] = []

    async def events() -> object:
        for chunk in (b"data: 1\n\n", b"data: [DONE]\n\n"):
            drained.append(chunk)
            yield chunk

    async def call(operation: Operation, body: dict[str, object], ctx: CallContext) -> Result:
        assert ctx.request_id.startswith("warmup-")
        if body.get("logprobs"):
            raise errors.invalid_request("no logprobs here")
        return StreamResult(events()) if body.get("stream") else JSONResult(200, b"{}")  # type: ignore[arg-type]

    timings = await warm_up(model(), call)
    assert "chat logprobs" not in timings and "completion logprobs" not in timings
    assert {"chat", "chat stream", "structured output"} <= timings.keys()
    assert drained == [b"data: 1\n\n", b"data: [DONE]\n\n"]
