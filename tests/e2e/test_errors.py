"""Every error case through the real stack: OpenAI's shape, the right status, no 500s."""

from __future__ import annotations

import contextlib
import time

import httpx
import openai
import pytest

CHAT = "smollm2-135m-instruct"


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture
def http(stack):
    with stack.http(timeout=120) as client:
        yield client


def test_unknown_model_404_without_listing_models(stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert error["code"] == "model_not_found"
    assert CHAT not in error["message"] and "minilm" not in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "smollm2", "messages": "hello"}', "messages"),
        (b'{"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
        (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', "max_tokens"),
    ],
)
def test_bad_input_is_400_with_param(http, body: bytes, param: str | None) -> None:
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = error_of(response)
    assert response.status_code == 400, error
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_context_length_exceeded(stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hello"}], max_tokens=2040
        )
    assert caught.value.body["code"] == "context_length_exceeded"
    long_prompt = "word " * 3000
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().completions.create(model=CHAT, prompt=long_prompt, max_tokens=5)
    assert caught.value.body["code"] == "context_length_exceeded"


def test_embedding_model_refuses_chat(http) -> None:
    response = http.post("/v1/chat/completions", json={"model": "all-minilm-l6-v2", "messages": []})
    assert response.status_code == 400 and error_of(response)["code"] == "model_not_supported"


def test_overload_is_503_in_openai_shape(stack) -> None:
    """The chat model allows 6 concurrent requests (paddock-e2e.yaml): a 7th, while 6 stream, is refused.

    Each stream has produced a token before the 7th is sent, so all 6 are in flight at the replica
    whatever the machine's speed.
    """
    (replica,) = stack.replica_urls(CHAT)
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Count to one hundred."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    short = {**body, "stream": False, "max_tokens": 5}
    readers = []  # kept: a line iterator that is dropped closes its connection
    with contextlib.ExitStack() as streams:
        for _ in range(6):
            client = streams.enter_context(stack.http(timeout=300))
            response = streams.enter_context(client.stream("POST", "/v1/chat/completions", json=body))
            assert response.status_code == 200
            readers.append(response.iter_lines())
            assert next(readers[-1]).startswith("data: ")
        assert stack.replica_status(replica)["inflight"] == 6
        with stack.http(timeout=60) as client:
            refused = client.post("/v1/chat/completions", json=short)
        assert refused.status_code == 503
        assert error_of(refused)["type"] == "server_error"
    # the 6 clients left: the replica drops their engine requests and takes new ones
    deadline = time.monotonic() + 30
    while (status := stack.replica_status(replica))["inflight"] or status["engine"]["unfinished_requests"]:
        assert time.monotonic() < deadline, f"replica still busy after its clients left: {status}"
        time.sleep(0.2)
    with stack.http(timeout=120) as client:
        answered = client.post("/v1/chat/completions", json=short)
    assert answered.status_code == 200


def test_disconnect_aborts_the_engine_request(stack, http) -> None:
    (replica,) = stack.replica_urls(CHAT)
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 1900,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert stack.replica_status(replica)["engine"]["unfinished_requests"] == 1
    # the client is gone after ~1 token of 1900: the engine must drop the request now
    deadline = time.monotonic() + 5
    while stack.replica_status(replica)["engine"]["unfinished_requests"] != 0:
        assert time.monotonic() < deadline, "engine request still running after the client left"
        time.sleep(0.1)
    assert stack.replica_status(replica)["inflight"] == 0


def test_unknown_route_and_method(http) -> None:
    response = http.get("/v1/nothing")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = http.get("/v1/chat/completions")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_service_survives_the_bad_input(stack) -> None:
    reply = stack.client().chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
    )
    assert "Paris" in reply.choices[0].message.content
