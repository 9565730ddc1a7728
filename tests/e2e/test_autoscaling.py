"""Scale from zero: the embedding model starts with no replica; the first request wakes one.

Named to run first, while the model is still at zero.
"""

from __future__ import annotations

import time

EMBED = "all-minilm-l6-v2"


def test_first_request_wakes_a_scaled_to_zero_model(stack) -> None:
    client = stack.client(timeout=600)
    states = {m.id: m.model_extra["status"] for m in client.models.list()}
    assert states[EMBED] == {"state": "scaled_to_zero", "replicas": 0}
    started = time.monotonic()
    result = client.embeddings.create(model=EMBED, input="wake up")
    assert len(result.data[0].embedding) == 384
    states = {m.id: m.model_extra["status"] for m in client.models.list()}
    assert states[EMBED] == {"state": "ready", "replicas": 1}
    print(f"cold start of {EMBED}: {time.monotonic() - started:.1f}s")
