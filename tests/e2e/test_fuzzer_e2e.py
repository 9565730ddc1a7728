"""The foreign fuzzer against the real stack: schemathesis, reading ``/openapi.json``, sends what it makes up
through the real ingress, governance and Ray Serve to vLLM serving SmolLM2 and MiniLM. Every answer must be
documented and none a 5xx (``tests/fuzzing.py``), so what vLLM itself does with a request Paddock let through
is checked too.

Budget: one round of a few generated cases per operation (no coverage phase: the unit-level fuzzer,
tests/api/test_fuzzer.py, runs that against the fake engine), under the ``fuzz`` tenant whose answers are
at most 8 tokens. The admin port gets its read-only operations: a fuzzed ``disable`` would change the
shared stack under the tests that follow.
"""

from __future__ import annotations

import pytest

from service.protocol.routes import EMBEDDINGS, ROUTES
from tests import fuzzing
from tests.e2e.conftest import ADMIN_TOKEN, CHAT, EMBED, Stack

MAX_EXAMPLES = 6
pytestmark = pytest.mark.timeout(900)  # the stack's start included, when this file runs alone
MODELS = {EMBEDDINGS: (EMBED,), "*": (CHAT, "smollm2")}


def test_every_answer_of_the_real_stack_is_documented_and_none_is_a_5xx(stack: Stack) -> None:
    # MiniLM starts scaled to zero (test_autoscaling.py, which runs first, wakes it): its cold start is not
    # what is fuzzed, and would outlast the fuzzer's 30 s read timeout.
    stack.client("fuzz", timeout=600).embeddings.create(model=EMBED, input="awake")
    headers = {"authorization": f"Bearer {stack.keys['fuzz']}"}
    schema = fuzzing.configure(f"{stack.base_url}/openapi.json", headers, max_examples=MAX_EXAMPLES, coverage=False)
    fuzzing.name_models(schema, MODELS)
    report = fuzzing.run(schema)
    assert not report.failures, report.summary()
    assert report.stop_reason == fuzzing.StopReason.COMPLETED, report.stop_reason
    for path in ROUTES:  # each route was fuzzed, and the engine answered some of it
        assert report.answered(f"POST {path}", 200, 500), (path, report.statuses)
    # Some generated requests were whole enough for the engine to answer (4 of 36 in one run: at 6 cases an
    # operation, most random bodies are rightly 400s, so a count per route would be a coin toss).
    assert sum(report.answered(f"POST {path}", 200, 300) for path in ROUTES) >= 1, report.statuses


def test_every_answer_of_the_real_admin_port_is_documented_and_none_is_a_5xx(stack: Stack) -> None:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    schema = fuzzing.configure(f"{stack.admin_url}/openapi.json", headers, max_examples=MAX_EXAMPLES, coverage=False)
    report = fuzzing.run(schema.include(method="GET"))
    assert not report.failures, report.summary()
    assert report.answered("GET /admin/v1/usage", 200, 300), report.statuses
