"""A dead engine: the running stream ends in band, the health check replaces the replica.

Runs last (it restarts the chat replica of the shared stack).
"""

from __future__ import annotations

import json
import os
import signal
import time
from urllib.parse import urlparse

import psutil

from tests.e2e.conftest import CAPITAL_QUESTION

CHAT = "smollm2-135m-instruct"


def engine_core_of(replica_url: str) -> psutil.Process:
    port = urlparse(replica_url).port
    (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    cores = [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or p.name().startswith("VLLM::EngineCore")
    ]
    assert len(cores) == 1, cores
    return cores[0]


def test_killed_engine_ends_stream_in_band_and_replica_is_replaced(stack) -> None:
    (old_url,) = stack.replica_urls(CHAT)
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with stack.http(timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(engine_core_of(old_url).pid, signal.SIGKILL)
            events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"

        deadline = time.monotonic() + 420
        while True:
            assert time.monotonic() < deadline, "the chat replica was not replaced"
            urls = stack.replica_urls(CHAT)
            if len(urls) > 1:
                reply = http.post("/v1/chat/completions", json=CAPITAL_QUESTION)
                if reply.status_code == 200:
                    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
                    break
                assert reply.headers["content-type"].startswith("application/json")
            time.sleep(2)
    assert stack.replica_urls(CHAT)[-1] != old_url
