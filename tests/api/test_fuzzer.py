"""A foreign fuzzer at the front door: schemathesis, knowing Paddock only by its OpenAPI documents.

The servers are the production runner on loopback sockets (``tests/api/front_door.py``: a governed ingress
with a real Governor, node-local store and audit log, its admin API, a replica around the fake engine). The
fuzzer runs in a thread of its own while they serve in the test's event loop, reads each port's
``GET /openapi.json`` and checks every answer against it (``tests/fuzzing.py``): documented, never a 5xx.
The API port and the admin port get a stack each: a fuzzed ``disable all`` must not turn the API port's
answers into 503s.

Budget: 20 generated cases per operation plus schemathesis's coverage phase (boundary values of every
field, every undocumented method): about 1,900 requests to the API port and 170 to the admin port, 20-35 s
for the module on 2 cores; seeded, so a run repeats. Each test is cut at 300 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config.loader import parse_config
from service.config.settings import DoorLimits
from service.engine.base import CallContext, Result
from service.engine.fake import FakeEngine
from service.protocol.routes import CHAT, COMPLETIONS, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES
from tests import fuzzing
from tests.api.front_door import ADMIN_TOKEN, start_stack

MODELS = {EMBEDDINGS: ("embed",), "*": ("chat", "chat-2")}  # what the fuzzer names (tests/fuzzing.py)
# The tenant may use what the document lists (web search, a built-in tool), so few generated requests stop there.
PARAMETERS = {"builtin_tools": ["web_search", "web_search_preview", "code_interpreter", "file_search", "mcp"]}
CONFIG = parse_config(
    {
        "ingress": {"max_body_bytes": "1MiB"},
        "models": [
            {
                "id": "chat",
                "aliases": ["chat-2"],
                "source": {"path": "/m"},
                "kv_cache_memory": "1GiB",
                "max_model_len": 4096,
            },
            {"id": "embed", "task": "embed", "source": {"path": "/e"}, "kv_cache_memory": "1GiB", "max_model_len": 256},
        ],
    },
    "test",
)
LIMITS = DoorLimits(header_timeout_s=5.0, body_timeout_s=5.0, linger_s=0.2)
MAX_EXAMPLES = 20
pytestmark = pytest.mark.timeout(300)


class EveryModelEngine(FakeEngine):
    """The fake engine behind every configured model (one replica serves them all here)."""

    async def call(self, operation: Any, body: dict[str, object], ctx: CallContext) -> Result:
        return await super().call(operation, {**body, "model": self.model_id}, ctx)


class BrokenEngine(FakeEngine):
    """An engine with a bug: every call raises (its replica answers 500, which the ingress relays)."""

    async def call(self, operation: Any, body: dict[str, object], ctx: CallContext) -> Result:
        raise RuntimeError("an injected bug")


async def fuzz(url: str, headers: dict[str, str], models: Mapping[str, Sequence[str]], **budget: Any) -> fuzzing.Report:
    def blocking() -> fuzzing.Report:
        schema = fuzzing.configure(url, headers, **budget)
        fuzzing.name_models(schema, models)
        return fuzzing.run(schema)

    return await asyncio.to_thread(blocking)


async def test_every_answer_of_the_api_port_is_documented_and_none_is_a_5xx(tmp_path: Path) -> None:
    stack = await start_stack(
        tmp_path, LIMITS, engine=EveryModelEngine(model_id="chat"), config=CONFIG, parameters=PARAMETERS
    )
    try:
        headers = {"authorization": f"Bearer {stack.key}"}
        url = f"http://127.0.0.1:{stack.api}/openapi.json"
        report = await fuzz(url, headers, MODELS, max_examples=MAX_EXAMPLES, coverage=True)
    finally:
        await stack.stop()
    assert not report.failures, report.summary()
    assert report.stop_reason == fuzzing.StopReason.COMPLETED, report.stop_reason
    for path in (CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, MESSAGES, COUNT_TOKENS):  # the fuzzer got through
        assert report.answered(f"POST {path}", 200, 300), (path, report.statuses)
        assert report.answered(f"POST {path}", 400, 500), (path, report.statuses)


async def test_every_answer_of_the_admin_port_is_documented_and_none_is_a_5xx(tmp_path: Path) -> None:
    stack = await start_stack(
        tmp_path, LIMITS, engine=EveryModelEngine(model_id="chat"), config=CONFIG, parameters=PARAMETERS
    )
    try:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        url = f"http://127.0.0.1:{stack.admin}/openapi.json"
        report = await fuzz(url, headers, {}, max_examples=MAX_EXAMPLES, coverage=True)
    finally:
        await stack.stop()
    assert not report.failures, report.summary()
    assert report.stop_reason == fuzzing.StopReason.COMPLETED, report.stop_reason
    assert report.answered("POST /admin/v1/disable", 200, 300), report.statuses


async def test_the_fuzzer_fails_on_a_5xx(tmp_path: Path) -> None:
    """The checks are not vacuous: behind an engine with a bug, generated chat requests that pass governance
    reach it, get the replica's 500, and every one of them is a failure."""
    stack = await start_stack(tmp_path, LIMITS, engine=BrokenEngine(model_id="chat"), config=CONFIG)
    try:
        url = f"http://127.0.0.1:{stack.api}/openapi.json"
        headers = {"authorization": f"Bearer {stack.key}"}
        report = await fuzz(url, headers, {"*": ("chat",)}, max_examples=8, coverage=False)
    finally:
        await stack.stop()
    served = report.answered(f"POST {CHAT}", 500, 600)
    assert served, report.statuses
    assert any(f"POST {CHAT}: Server error" in failure for failure in report.failures), report.failures


async def test_each_port_serves_its_document_without_a_key(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, LIMITS, config=CONFIG)
    try:
        async with aiohttp.ClientSession() as session:
            for port, path in ((stack.api, "/v1/chat/completions"), (stack.admin, "/admin/v1/disable")):
                async with session.get(f"http://127.0.0.1:{port}/openapi.json") as response:
                    assert response.status == 200 and response.content_type == "application/json"
                    assert response.headers["x-request-id"]
                    document = json.loads(await response.read())
                assert document["openapi"] == "3.1.0" and "post" in document["paths"][path]
    finally:
        await stack.stop()
