"""Prefix-cache-aware routing (``service.api.routing``) and the Forwarder's use of it."""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from harness.standins import serve, serve_handler
from service.api import routing
from service.api.forward import routing_key
from service.api.ingress import IngressApp
from service.api.routing import LOAD_SLACK, pick, pick_for_prefix, prefix_key, rank
from service.api.upstream import Endpoint, Upstream
from service.config.loader import parse_config
from service.config.settings import Settings
from service.governance.factory import build_governor
from service.governance.keys import hash_key, new_key
from service.observability.metrics import ServiceMetrics

SYSTEM = "You are the support agent of Example Corp. " * 20  # ~860 characters: long enough to key on


def endpoints(n: int, prefix: str = "replica") -> list[Endpoint]:
    return [Endpoint(f"http://10.0.0.{i}:9000", f"{prefix}-{i}") for i in range(n)]


def chat(system: str, last: str) -> dict[str, object]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": last}]}


def owner(key: int | None, replicas: Sequence[Endpoint]) -> str:
    return pick_for_prefix(key, replicas).replica_id


def test_same_prefix_goes_to_the_same_replica_whatever_the_last_message() -> None:
    replicas = endpoints(4)
    for g in range(20):
        system = f"Tenant {g}. {SYSTEM}"
        chosen = {owner(prefix_key("chat", chat(system, f"question {i}?")), replicas) for i in range(10)}
        assert len(chosen) == 1


def test_each_api_keys_on_its_leading_text() -> None:
    long = "x" * 3000
    same = prefix_key("chat", chat(SYSTEM, "a"))
    assert same is not None and same == prefix_key("chat", chat(SYSTEM, "b"))
    assert same != prefix_key("chat", chat(SYSTEM.upper(), "a"))
    parts = {"messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}, {"role": "user"}]}
    assert prefix_key("chat", parts) == prefix_key("chat", {**parts, "messages": [*parts["messages"][:1], "other"]})
    # Anthropic's system prompt and the Responses API's instructions lead the conversation
    assert prefix_key("messages", {"system": SYSTEM, "messages": [{"role": "user", "content": "a"}]}) == prefix_key(
        "messages", {"system": SYSTEM, "messages": [{"role": "user", "content": "b"}]}
    )
    assert prefix_key("responses", {"instructions": SYSTEM, "input": "a"}) == prefix_key(
        "responses", {"instructions": SYSTEM, "input": "b"}
    )
    # a completions prompt: its first PREFIX_CHARS characters
    assert prefix_key("completions", {"prompt": long + "tail 1"}) == prefix_key("completions", {"prompt": long + "2"})
    assert prefix_key("completions", {"prompt": [long, "other"]}) == prefix_key("completions", {"prompt": long})
    # a short request has no prefix worth a replica; a lone long message keys on itself
    assert prefix_key("chat", chat("Be brief.", "hi")) is None
    assert prefix_key("completions", {"prompt": [1, 2, 3] * 400}) is None
    assert prefix_key("chat", {"messages": [{"role": "user", "content": long}]}) is not None
    assert prefix_key("embeddings", {"input": long}) is None
    # the client's own prompt_cache_key wins; the tenant's cache_salt separates tenants
    assert prefix_key("chat", {**chat("a", "b"), "prompt_cache_key": "conv-1"}) is not None
    assert prefix_key("chat", {**chat(SYSTEM, "a"), "cache_salt": "t1"}) != prefix_key(
        "chat", {**chat(SYSTEM, "a"), "cache_salt": "t2"}
    )


def test_a_huge_body_hashes_only_its_bounded_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    digest = routing._Lead.digest

    def spy(self: routing._Lead, salt: str) -> int:
        sizes.append(self.size)
        return digest(self, salt)

    monkeypatch.setattr(routing._Lead, "digest", spy)
    history = [{"role": "user", "content": "y" * 10_000} for _ in range(500)]  # 5 MB of messages
    assert prefix_key("chat", {"messages": history}) is not None
    assert sizes == [routing.PREFIX_CHARS]


def test_different_prefixes_spread_over_the_replicas() -> None:
    replicas = endpoints(4)
    counts = collections.Counter(
        owner(prefix_key("chat", chat(f"Prompt {g}. {SYSTEM}", "q")), replicas) for g in range(400)
    )
    assert set(counts) == {e.replica_id for e in replicas}
    assert all(60 <= n <= 140 for n in counts.values()), counts  # 100 each expected; binomial sd ~8.7


def test_a_replica_leaving_or_joining_moves_only_its_own_keys() -> None:
    replicas = endpoints(5)
    keys = [prefix_key("chat", chat(f"Prompt {g}. {SYSTEM}", "q")) for g in range(1000)]
    before = {key: owner(key, replicas) for key in keys}
    gone = replicas[2]
    after = {key: owner(key, [e for e in replicas if e is not gone]) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved and all(before[key] == gone.replica_id for key in moved)
    assert len(moved) == sum(1 for key in keys if before[key] == gone.replica_id)
    assert len({after[key] for key in moved}) == 4  # its keys spread over the others
    joined = [*replicas, Endpoint("http://10.0.0.9:9000", "replica-new")]
    grown = {key: owner(key, joined) for key in keys}
    moved = [key for key in keys if before[key] != grown[key]]
    assert all(grown[key] == "replica-new" for key in moved)
    assert 100 <= len(moved) <= 240  # about 1/6 of them


def test_an_overloaded_preferred_replica_falls_back_to_the_least_loaded() -> None:
    replicas = endpoints(2)
    key = prefix_key("chat", chat(SYSTEM, "q"))
    preferred, other = rank(key, replicas)  # type: ignore[arg-type]
    preferred.inflight, other.inflight = LOAD_SLACK, 0
    assert pick_for_prefix(key, replicas) is preferred  # within the bound: the cache wins
    preferred.inflight = LOAD_SLACK + 1
    assert pick_for_prefix(key, replicas) is other  # clearly more in flight: least loaded
    preferred.inflight, other.inflight = 50, 40  # at load the bound is relative: 25 % over the least loaded
    assert pick_for_prefix(key, replicas) is preferred
    preferred.inflight = 51
    assert pick_for_prefix(key, replicas) is other


def test_a_hot_prefix_spills_onto_its_second_ranked_replica() -> None:
    replicas = endpoints(5)
    key = prefix_key("chat", chat(SYSTEM, "q"))
    ordered = rank(key, replicas)  # type: ignore[arg-type]
    ordered[0].inflight = 20
    for e in ordered[1:]:
        e.inflight = 1
    assert pick_for_prefix(key, replicas) is ordered[1]


def test_least_loaded_is_power_of_two_choices_and_ignores_prefixes() -> None:
    config = parse_config(
        {
            "models": [
                {"id": "p", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "routing": "prefix"},
                {"id": "l", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"},
                {"id": "e", "source": {"path": "/e"}, "task": "embed"},
            ]
        },
        "test",
    )
    prefix, least, embed = config.models
    policies = (prefix.routing_policy, least.routing_policy, embed.routing_policy)
    assert policies == ("prefix", "least_loaded", "least_loaded")
    body = chat(SYSTEM, "q")
    assert routing_key(prefix, "/v1/chat/completions", body) is not None
    assert routing_key(least, "/v1/chat/completions", body) is None
    assert routing_key(embed, "/v1/embeddings", {"input": SYSTEM}) is None
    replicas = endpoints(3)
    replicas[0].inflight, replicas[1].inflight, replicas[2].inflight = 5, 1, 1
    chosen = collections.Counter(pick(replicas).replica_id for _ in range(300))
    assert "replica-0" not in chosen and set(chosen) == {"replica-1", "replica-2"}  # never the busiest of two


def test_prefix_routing_on_an_embed_model_is_refused() -> None:
    with pytest.raises(ValueError, match="KV cache"):
        parse_config({"models": [{"id": "e", "source": {"path": "/e"}, "task": "embed", "routing": "prefix"}]}, "t")


# --------------------------------------------------------------------------- through the ingress


class Replicas:
    """Two stand-in replicas that record which of them got each request."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []
        self.ports: list[tuple[str, int]] = []

    def handler(self, name: str):  # type: ignore[no-untyped-def]
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            self.got.append((name, body["messages"][0]["content"]))
            return web.json_response({"id": "x"})

        return handle


class Directory:
    ready = True

    def __init__(self, table: list[Endpoint]) -> None:
        self.table = table

    def endpoints(self, model_id: str) -> Sequence[Endpoint]:
        return self.table

    async def wake(self, model_id: str, timeout_s: float) -> Sequence[Endpoint]:
        return self.table

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None:
        pass


@pytest.fixture
async def two_replicas() -> AsyncIterator[tuple[str, Replicas]]:
    replicas = Replicas()
    a = await serve_handler(replicas.handler("a"))
    b = await serve_handler(replicas.handler("b"))
    config = parse_config(
        {
            "models": [
                {"id": "prefix", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "routing": "prefix"},
                {"id": "least", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "routing": "least_loaded"},
            ]
        },
        "test",
    )
    replicas.ports = [("a", int(a.url.rsplit(":", 1)[1])), ("b", int(b.url.rsplit(":", 1)[1]))]
    directory = Directory([Endpoint(a.url, "a"), Endpoint(b.url, "b")])
    served = await serve(IngressApp(config, directory, Upstream("t")))
    yield served.url, replicas
    await served.stop()
    await a.stop()
    await b.stop()


async def send(base: str, model: str, system: str, last: str, key: str | None = None) -> None:
    body = {"model": model, **chat(system, last)}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/v1/chat/completions", data=json.dumps(body), headers=headers) as response:
            assert response.status == 200, await response.text()


async def test_the_ingress_routes_each_prefix_to_one_replica_and_least_loaded_spreads(two_replicas) -> None:
    base, replicas = two_replicas
    for g in range(8):
        for i in range(3):
            await send(base, "prefix", f"Group {g}. {SYSTEM}", f"question {i}")
    by_group: dict[str, set[str]] = collections.defaultdict(set)
    for name, system in replicas.got:
        by_group[system].add(name)
    assert len(by_group) == 8 and all(len(names) == 1 for names in by_group.values())
    assert {name for name, _ in replicas.got} == {"a", "b"}  # both replicas used (the hashes are deterministic)
    replicas.got.clear()
    for i in range(24):  # one prefix, sequential (nothing in flight): P2C picks at random
        await send(base, "least", SYSTEM, f"question {i}")
    assert {name for name, _ in replicas.got} == {"a", "b"}  # all on one: 2 in 2**24


async def test_a_governed_request_is_routed_by_the_body_it_forwards(two_replicas, tmp_path: Path) -> None:
    _, replicas = two_replicas
    key = new_key()
    policy = {"tenants": [{"id": "acme", "models": ["*"], "keys": [{"id": "k", "hash": hash_key(key)}]}]}
    (tmp_path / "governance.yaml").write_text(yaml.safe_dump(policy))
    settings = Settings(
        state_dir=tmp_path, governance_file=tmp_path / "governance.yaml", audit_stdout=False, admin_token="t"
    )
    config = parse_config(
        {"models": [{"id": "prefix", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "routing": "prefix"}]}, "t"
    )
    governor = build_governor(config, settings, ServiceMetrics(), kill_poll_s=0.05)
    await governor.start()
    a, b = (Endpoint(f"http://127.0.0.1:{port}", name) for name, port in replicas.ports)
    served = await serve(IngressApp(config, Directory([a, b]), Upstream("t"), governor))
    try:
        for g in range(8):
            for i in range(3):
                await send(served.url, "prefix", f"Group {g}. {SYSTEM}", f"question {i}", key)
    finally:
        await served.stop()
        await governor.stop()
    by_group: dict[str, set[str]] = collections.defaultdict(set)
    for name, system in replicas.got:
        by_group[system].add(name)
    assert len(by_group) == 8 and all(len(names) == 1 for names in by_group.values())
