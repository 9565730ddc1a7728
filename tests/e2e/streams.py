"""A streamed chat read to its end in a thread, for the e2e tests that stop or rescale a stack under load."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.e2e.conftest import Stack


def long_stream(model: str, max_tokens: int) -> dict[str, Any]:
    """A greedy chat stream of exactly ``max_tokens`` tokens (``ignore_eos``), with its usage at the end."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello! Who are you?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass
class Stream:
    """One streamed chat: its events, when its first token and its end came, and any failure."""

    stack: Stack
    body: dict[str, Any]
    key: str = "acme"  # the stack's key to send it with
    first_token: threading.Event = field(default_factory=threading.Event)
    events: list[str] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0
    failure: str = ""

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            with (
                self.stack.http(self.key, timeout=httpx.Timeout(300, connect=10)) as http,
                http.stream("POST", "/v1/chat/completions", json=self.body) as response,
            ):
                if response.status_code != 200:
                    self.failure = f"{response.status_code}: {response.read()!r}"
                    return
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(line[len("data:") :].strip())
                        self.first_token.set()
        except Exception as error:  # noqa: BLE001 - recorded, asserted on by the tests
            self.failure = repr(error)
        finally:
            self.ended_at = time.monotonic()
            self.first_token.set()

    def completion_tokens(self) -> int:
        usage = [json.loads(e)["usage"] for e in self.events[:-1] if json.loads(e).get("usage")]
        return int(usage[-1]["completion_tokens"]) if usage else 0

    def problem(self) -> str:
        """Why this stream is not whole ("": it ended with [DONE], no error event, every token it asked for)."""
        if self.failure:
            return self.failure
        if not self.events or self.events[-1] != "[DONE]":
            return f"no [DONE]: {self.events[-3:]}"
        errors = [e for e in self.events[:-1] if "error" in json.loads(e)]
        if errors:
            return f"error event: {errors[0]}"
        if self.completion_tokens() != self.body["max_tokens"]:
            return f"{self.completion_tokens()} tokens of {self.body['max_tokens']}"
        return ""
