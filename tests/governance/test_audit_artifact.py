"""Every request record names the served artifact: the manifest digest of the model files a replica verified.

A real ingress and governor, and a stand-in replica behind an endpoint that announced a digest, as a
``ModelServer`` announces the one it verified (``serve/registry.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from harness.standins import OneReplicaDirectory, serve, serve_handler
from service.api.ingress import IngressApp
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.audit import verify
from service.governance.factory import build_governor
from service.governance.keys import hash_key, new_key
from service.observability.metrics import ServiceMetrics

CONFIG = parse_config(
    {"models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 1000}]}, "test"
)
ANNOUNCED = "sha256:" + "1" * 64  # what the model's replicas announced when the request was admitted
SERVED = "sha256:" + "2" * 64  # what the replica that had the request verified


async def answer(request: web.Request) -> web.Response:
    await request.read()
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    return web.json_response(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}], "usage": usage}
    )


@pytest.fixture
async def ingress(tmp_path: Path):
    key = new_key()
    policy = tmp_path / "governance.yaml"
    policy.write_text(
        yaml.safe_dump({"tenants": [{"id": "acme", "models": ["*"], "keys": [{"id": "ka", "hash": hash_key(key)}]}]})
    )
    settings = Settings(state_dir=tmp_path, governance_file=policy, audit_stdout=False, admin_token="t")
    governor = build_governor(CONFIG, settings, ServiceMetrics())
    governor.trail.artifact_of = {"chat": ANNOUNCED}.get  # as serve/deployments.py wires the directory's view
    await governor.start()
    replica = await serve_handler(answer)
    app = IngressApp(CONFIG, OneReplicaDirectory(Endpoint(replica.url, "r", artifact=SERVED)), Upstream("t"), governor)
    served = await serve(app)
    yield served.url, key, governor, tmp_path / "audit"
    await served.stop()
    await governor.stop()
    await replica.stop()


async def post(base: str, key: str) -> int:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            base + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as r:
            await r.read()
            return r.status


async def test_admitted_and_completed_records_carry_the_artifact_digest(ingress) -> None:
    base, key, governor, audit = ingress
    assert await post(base, key) == 200
    assert await post(base, "pk-wrong") == 401
    governor.trail.close()
    files = sorted(audit.glob("*.jsonl"))
    assert verify(files) == []  # the field is part of the hash-chained record
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    requests = [(r["phase"], r["artifact"]) for r in records if r.get("event") == "request"]
    assert requests == [("admitted", ANNOUNCED), ("completed", SERVED), ("refused", None)]
