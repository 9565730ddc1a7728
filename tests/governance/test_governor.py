"""The governance decision without HTTP: authentication, overrides, limits, kills, fail-open."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.factory import build_governor
from service.governance.governor import GovernanceOptions, effective
from service.governance.keys import hash_key, new_key
from service.governance.refusal import Refusal
from service.governance.store.base import StoreUnavailable, Usage
from service.observability.metrics import ServiceMetrics

CONFIG = parse_config(
    {
        "models": [
            {"id": "chat", "aliases": ["c"], "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 512},
            {"id": "emb", "source": {"path": "/e"}, "task": "embed"},
        ]
    },
    "test",
)
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture
async def gov(tmp_path: Path):
    keys = {name: new_key() for name in ("a", "b", "old", "off", "frozen", "later")}
    tenants = [
        {
            "id": "acme",
            "models": ["c"],
            "limits": {"requests_per_minute": 100, "tokens_per_day": 10_000},
            "keys": [
                {"id": "ka", "hash": hash_key(keys["a"])},
                {"id": "kb", "hash": hash_key(keys["b"]), "models": ["*"], "limits": {"requests_per_minute": 2}},
                {"id": "kold", "hash": hash_key(keys["old"]), "expires": "2020-01-01T00:00:00Z"},
                {"id": "koff", "hash": hash_key(keys["off"]), "enabled": False},
                {"id": "klater", "hash": hash_key(keys["later"]), "expires": "2999-01-01T00:00:00Z"},
            ],
        },
        {"id": "ice", "enabled": False, "models": ["*"], "keys": [{"id": "kf", "hash": hash_key(keys["frozen"])}]},
    ]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    settings = Settings(state_dir=tmp_path, governance_file=path, audit_stdout=False, admin_token="t")
    governor = build_governor(CONFIG, settings, ServiceMetrics(), auth_failures_per_minute=3)
    yield governor, keys
    await governor.stop()


async def reason_of(call) -> str:
    with pytest.raises(Refusal) as caught:
        await call
    return caught.value.reason


async def test_authentication_outcomes(gov) -> None:
    governor, keys = gov
    assert (await governor.authenticate(f"Bearer {keys['a']}", "1.1.1.1")).key.id == "ka"
    assert (await governor.authenticate(f"Bearer {keys['later']}", "1.1.1.1")).key.id == "klater"
    assert await reason_of(governor.authenticate(None, "1.1.1.1")) == "missing_api_key"
    assert await reason_of(governor.authenticate(f"Bearer {keys['old']}", "1.1.1.1")) == "invalid_api_key"
    assert await reason_of(governor.authenticate(f"Bearer {keys['off']}", "2.2.2.2")) == "invalid_api_key"
    assert await reason_of(governor.authenticate(f"Bearer {keys['frozen']}", "2.2.2.2")) == "tenant_disabled"


async def test_failed_authentications_are_throttled_per_client_but_never_a_valid_key(gov) -> None:
    governor, keys = gov
    for _ in range(3):
        assert await reason_of(governor.authenticate("Bearer pk-bad", "6.6.6.6")) == "invalid_api_key"
    assert await reason_of(governor.authenticate("Bearer pk-bad", "6.6.6.6")) == "auth_throttled"
    assert await reason_of(governor.authenticate(None, "6.6.6.6")) == "auth_throttled"
    assert await reason_of(governor.authenticate(f"Bearer {keys['off']}", "6.6.6.6")) == "auth_throttled"
    assert (await governor.authenticate(f"Bearer {keys['a']}", "6.6.6.6")).key.id == "ka"  # the key is checked first
    assert await reason_of(governor.authenticate(f"Bearer {keys['frozen']}", "6.6.6.6")) == "tenant_disabled"
    assert await reason_of(governor.authenticate("Bearer pk-bad", "7.7.7.7")) == "invalid_api_key"


async def test_the_throttle_counts_in_process_while_the_store_is_down(gov) -> None:
    governor, keys = gov

    async def broken(*_args, **_kw):
        raise StoreUnavailable("down")

    governor.store.hit = broken
    for _ in range(3):
        assert await reason_of(governor.authenticate("Bearer pk-bad", "6.6.6.6")) == "invalid_api_key"
    assert await reason_of(governor.authenticate("Bearer pk-bad", "6.6.6.6")) == "auth_throttled"
    assert (await governor.authenticate(f"Bearer {keys['a']}", "6.6.6.6")).key.id == "ka"
    assert governor.trail.metrics.store_errors.labels("auth")._value.get() == 4


async def test_key_overrides_replace_the_tenant_and_count_for_the_key_alone(gov) -> None:
    governor, keys = gov
    a = await governor.authenticate(f"Bearer {keys['a']}", "x")
    b = await governor.authenticate(f"Bearer {keys['b']}", "x")
    assert governor.allowed(a) == {"chat"} and governor.allowed(b) == {"chat", "emb"}
    assert governor.resolve(a, "emb") is None and governor.resolve(a, "c").id == "chat"
    quotas = {q.kind: q.scope for q in effective(b)[2]}
    assert quotas == {"requests_per_minute": "key:kb", "tokens_per_day": "tenant:acme"}
    model = governor.resolve(b, "chat")
    for i in range(2):
        ticket = await governor.admit(b, model, "/v1/chat/completions", BODY, f"r{i}", "x")
        assert ticket.headers["x-ratelimit-remaining-requests"] == str(1 - i)
        await governor.settle(ticket, Usage(3, 2))
    with pytest.raises(Refusal) as caught:
        await governor.admit(b, model, "/v1/chat/completions", BODY, "r3", "x")
    assert caught.value.reason == "rate_limited" and caught.value.retry_after_s >= 1
    await governor.admit(a, model, "/v1/chat/completions", BODY, "r4", "x")  # the tenant's own limit


async def test_kills_refuse_new_requests_and_cut_running_ones(gov) -> None:
    governor, keys = gov
    a = await governor.authenticate(f"Bearer {keys['a']}", "x")
    model = governor.resolve(a, "chat")
    running = await governor.admit(a, model, "/v1/chat/completions", BODY, "r1", "x")
    await governor.store.kill("key:ka", "leak", "admin")
    await governor.refresh_kills()
    assert running.killed
    assert await reason_of(governor.admit(a, model, "/v1/chat/completions", BODY, "r2", "x")) == "killed"


async def test_store_down_fails_closed_unless_fail_open(gov) -> None:
    governor, keys = gov
    a = await governor.authenticate(f"Bearer {keys['a']}", "x")
    model = governor.resolve(a, "chat")

    async def broken(*_args, **_kw):
        raise StoreUnavailable("down")

    governor.store.admit = broken
    assert await reason_of(governor.admit(a, model, "/v1/chat/completions", BODY, "r1", "x")) == "store_unavailable"
    governor._options = GovernanceOptions(fail_open=True)
    ticket = await governor.admit(a, model, "/v1/chat/completions", BODY, "r2", "x")
    assert ticket.lease_id is None


async def test_grants_are_worked_out_once_per_policy_version(gov) -> None:
    governor, keys = gov
    a = await governor.authenticate(f"Bearer {keys['a']}", "x")
    b = await governor.authenticate(f"Bearer {keys['b']}", "x")
    old = governor.policy.index.by_id("kold")
    assert governor.grant(a) is governor.grant(old)  # no overrides: the tenant's grant
    assert governor.grant(b) is not governor.grant(a)
    for principal in (a, b):
        assert (governor.grant(principal).limits, governor.grant(principal).quotas) == effective(principal)[::2]
    allowed = governor.allowed(a)
    allowed.add("emb")  # a fresh set each time
    assert governor.allowed(a) == {"chat"}
    path = governor.policy.path
    data = yaml.safe_load(path.read_text())
    data["tenants"][0] |= {"models": ["*"], "limits": {"requests_per_minute": 7}}
    path.write_text(yaml.safe_dump(data))
    assert governor.policy.reload_if_changed()
    renewed = await governor.authenticate(f"Bearer {keys['a']}", "x")
    assert governor.allowed(renewed) == {"chat", "emb"}
    assert [(q.kind, q.limit) for q in governor.grant(renewed).quotas] == [("requests_per_minute", 7)]
    assert governor.allowed(a) == {"chat"}  # a request authenticated before the reload keeps its policy


async def test_kills_are_checked_only_when_there_are_some(gov) -> None:
    governor, keys = gov
    a = await governor.authenticate(f"Bearer {keys['a']}", "x")
    model = governor.resolve(a, "chat")
    await governor.settle(await governor.admit(a, model, "/v1/chat/completions", BODY, "r1", "x"), Usage(1, 1))
    await governor.store.kill("model:chat", "bad weights", "admin")
    await governor.refresh_kills()
    assert await reason_of(governor.admit(a, model, "/v1/chat/completions", BODY, "r2", "x")) == "killed"
    await governor.store.revive("model:chat", "admin")
    await governor.refresh_kills()
    await governor.admit(a, model, "/v1/chat/completions", BODY, "r3", "x")
