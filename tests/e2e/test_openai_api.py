"""The OpenAI API through the real stack, with the openai SDK as the client."""

from __future__ import annotations

import math

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_paris(stack) -> None:
    reply = stack.client().chat.completions.create(model=CHAT, messages=FRANCE, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == CHAT and reply.usage.completion_tokens > 0


def test_alias_routes_to_the_same_model(stack) -> None:
    reply = stack.client().chat.completions.create(model="smollm2", messages=FRANCE, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content


def test_stream_concatenates_to_the_non_streamed_answer_with_usage(stack) -> None:
    client = stack.client()
    whole = client.chat.completions.create(model=CHAT, messages=FRANCE, temperature=0, max_tokens=40)
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=FRANCE,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunks[0].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions(stack) -> None:
    reply = stack.client().completions.create(
        model=CHAT, prompt="The capital of France is", temperature=0, max_tokens=5
    )
    assert reply.choices[0].text.strip() and reply.usage.completion_tokens <= 5


def test_responses(stack) -> None:
    reply = stack.client().responses.create(
        model=CHAT, input="What is the capital of France?", temperature=0, max_output_tokens=30
    )
    assert "Paris" in reply.output_text


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_related_closer_than_unrelated(stack) -> None:
    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue rose by ten percent."]
    result = stack.client().embeddings.create(model=EMBED, input=texts)
    cat, kitten, revenue = (d.embedding for d in result.data)
    assert len(cat) == 384
    assert _cosine(cat, kitten) > _cosine(cat, revenue) + 0.2


def test_models_lists_both_with_state(stack) -> None:
    models = {m.id: m for m in stack.client().models.list()}
    assert set(models) == {CHAT, EMBED}
    assert models[CHAT].model_extra["status"]["state"] == "ready"
    assert models[CHAT].model_extra["aliases"] == ["smollm2"]


def test_health_ready_and_exactly_one_request_id(stack) -> None:
    with stack.http() as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200
        given = http.post("/v1/embeddings", json={"model": EMBED, "input": "x"}, headers={"x-request-id": "req-42"})
        assert given.headers.get_list("x-request-id") == ["req-42"]
        made = http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
        assert len(made.headers.get_list("x-request-id")) == 1 and made.headers["x-request-id"] != "req-42"
