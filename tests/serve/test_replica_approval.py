"""A model replica verifies its model folder before vLLM is imported, through ``ModelServer.__init__`` itself.

The deployment's own class runs here without Ray: the replica context is a stand-in, the registry a recorder,
and ``service.engine.vllm_engine`` a module whose engine is the test engine (``engine/fake.py``), recording
that it was built. Everything between (settings, resolving the folder, the approval check, the replica's HTTP
server and its announcement) is the code a replica runs on every start and every scale-up.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from service.config.loader import parse_config
from service.config.schema import ApprovalConfig
from service.engine.fake import FakeEngine
from service.models.approval import ArtifactRefused, approve
from service.serve import deployments
from service.serve.builder import build_app
from tests.models.artifacts import OTHER_TEMPLATE, Keys, make_keys, make_model


class _Call:
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self._calls = calls

    def remote(self, *args: Any) -> Any:
        self._calls.append(args)

        async def done() -> None:
            return None

        return done()


class Registry:
    def __init__(self) -> None:
        self.heartbeats: list[tuple[Any, ...]] = []
        self.heartbeat = _Call(self.heartbeats)
        self.remove = _Call([])


@pytest.fixture
def replica_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """No Ray, no vLLM: what ``ModelServer.__init__`` reaches for, replaced; returns the engines built."""
    built: list[Any] = []

    class Engine(FakeEngine):
        def __init__(self, model: Any, path: Path, otlp: Any) -> None:
            super().__init__(model.id)
            built.append((model.id, path))

    fake = types.ModuleType("service.engine.vllm_engine")
    fake.VLLMEngine = Engine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "service.engine.vllm_engine", fake)
    context = types.SimpleNamespace(replica_id=types.SimpleNamespace(unique_id="replica-1"))
    monkeypatch.setattr(deployments.serve, "get_replica_context", lambda: context)
    monkeypatch.setenv("PADDOCK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PADDOCK_REPLICA_HOST", "127.0.0.1")
    monkeypatch.setenv("PADDOCK_TRACING", "off")
    return built


class Replica(deployments.ModelServer.func_or_class):  # type: ignore[misc, name-defined]
    """The class Ray Serve instantiates on the replica's node; the test runs its async ``__del__`` itself."""

    def __del__(self) -> None:  # garbage collection of a refused replica: it started nothing
        pass


def model_entry(folder: Path) -> dict[str, Any]:
    return {"id": "chat", "source": {"path": str(folder)}, "kv_cache_memory": "64MiB"}


async def start_replica(folder: Path, keys: Keys, registry: Registry) -> Any:
    server = Replica.__new__(Replica)
    approval = ApprovalConfig(keys=(str(keys.public),)).model_dump(mode="json")
    await server.__init__(model_entry(folder), "token", registry, 1 << 20, approval)
    return server


async def test_a_tampered_folder_is_refused_before_the_engine_is_built(tmp_path: Path, replica_env: list[Any]) -> None:
    keys, folder = make_keys(tmp_path, "operator"), make_model(tmp_path / "model")
    approve(folder, keys.private)
    (folder / "chat_template.jinja").write_text(OTHER_TEMPLATE)
    registry = Registry()
    with pytest.raises(ArtifactRefused, match=r"model chat: .*chat_template\.jinja differs"):
        await start_replica(folder, keys, registry)
    assert replica_env == [] and registry.heartbeats == []  # no engine, never announced


async def test_an_unsigned_folder_is_refused_before_the_engine_is_built(tmp_path: Path, replica_env: list[Any]) -> None:
    keys, folder = make_keys(tmp_path, "operator"), make_model(tmp_path / "model")
    with pytest.raises(ArtifactRefused, match="no approval signature"):
        await start_replica(folder, keys, Registry())
    assert replica_env == []


async def test_an_approved_folder_is_loaded_and_its_digest_announced(tmp_path: Path, replica_env: list[Any]) -> None:
    keys, folder = make_keys(tmp_path, "operator"), make_model(tmp_path / "model")
    approved = approve(folder, keys.private)
    registry = Registry()
    server = await start_replica(folder, keys, registry)
    try:
        assert replica_env == [("chat", folder)]
        [(model_id, replica_id, url, artifact)] = registry.heartbeats
        assert (model_id, replica_id, artifact) == ("chat", "replica-1", approved.digest)
        assert url.startswith("http://127.0.0.1:")
    finally:
        await deployments.ModelServer.func_or_class.__del__(server)


def test_every_model_deployment_is_bound_with_the_services_approval_config(tmp_path: Path) -> None:
    config = parse_config(
        {
            "approval": {"keys": ["/etc/paddock/approval/operator.pub"], "revoked": ["sha256:" + "0" * 64]},
            "models": [model_entry(tmp_path)],
        },
        "test",
    )
    ingress = build_app(config)._bound_deployment
    [model_server] = ingress.init_args[3].values()
    assert model_server._bound_deployment.init_args[4] == config.approval.model_dump(mode="json")
