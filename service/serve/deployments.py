"""The Ray Serve deployments: one per model, the registry, and the ingress.

Every model replica wraps a vLLM engine and serves it on its own HTTP port;
the ingress replicas own the public port and route to them by the body's
``model`` field. Ray Serve places, scales, health-checks and replaces the
replicas; no request or token passes through a Ray RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import serve

from service.api.admin import AdminApp
from service.api.ingress import IngressApp
from service.api.metrics_app import MetricsApp
from service.api.replica import ReplicaApp
from service.api.upstream import Upstream
from service.config.schema import ApprovalConfig, ModelConfig, ServiceConfig
from service.config.settings import DoorLimits, Settings
from service.governance.factory import admin_token, build_governor
from service.governance.figures import refresh_tenant_gauges
from service.models.sources import resolve
from service.observability.logs import configure_logging
from service.observability.metrics import ServiceMetrics
from service.observability.tracing import build_tracing, otlp_protocol, otlp_traces_endpoint
from service.serve import http
from service.serve.autoscaling import INFLIGHT_METRIC
from service.serve.registry import HEARTBEAT_INTERVAL_S, Announcement, RegistryDirectory, RegistryState

if TYPE_CHECKING:
    from service.models.approval import Artifact

log = logging.getLogger(__name__)
DRAIN_REPORT_INTERVAL_S = 0.25


@serve.deployment(
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=10_000,
    logging_config={"enable_access_log": False},
)
class Registry:
    """Which replica of which model listens where (see ``registry.py``).

    Ingresses long-poll :meth:`snapshot`: it answers at once when their version
    is stale, otherwise when the table changes (or after ``wait_s``), so an idle
    service costs no polling.
    """

    async def __init__(self) -> None:  # type: ignore[misc]  # Ray Serve awaits an async __init__
        self._state = RegistryState()
        self._changed = asyncio.Event()
        self._expiry = asyncio.create_task(self._expire_forever())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._state.expire():
                self._notify()

    def heartbeat(self, model_id: str, replica_id: str, url: str, artifact: str = "") -> None:
        before = self._state.version
        self._state.heartbeat(Announcement(model_id, replica_id, url, artifact))
        if self._state.version != before:
            self._notify()

    def remove(self, replica_id: str) -> None:
        before = self._state.version
        self._state.remove(replica_id)
        if self._state.version != before:
            self._notify()

    async def snapshot(self, known_version: str = "", wait_s: float = 0.0) -> dict[str, Any]:
        if known_version == self._state.version and wait_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait_s)
        return self._state.snapshot()

    def drain(self) -> None:
        """Called by ``paddock serve`` when told to stop: every ingress refuses new requests from now on."""
        self._state.drain()
        self._notify()

    def report_ingress(self, ingress_id: str, inflight: int) -> None:
        self._state.report_ingress(ingress_id, inflight)

    def drain_status(self) -> dict[str, int]:
        return self._state.drain_status()


@serve.deployment
class ModelServer:
    """One replica of one model: a vLLM engine behind its own HTTP server.

    Before vLLM is even imported, the replica checks that the model folder is an approved artifact
    (``models/approval.py``), on whichever node it starts: a refusal fails the replica's start.
    """

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async __init__
        self,
        model: dict[str, Any],
        token: str,
        registry: Any,
        max_body_bytes: int,
        approval: dict[str, Any],
        drain_timeout_s: float = 30.0,
    ) -> None:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        self._model = ModelConfig.model_validate(model)
        self._registry = registry
        self._drain_timeout_s = drain_timeout_s  # ingress.drain_timeout_s: streams in flight at a stop may finish
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        started = time.monotonic()
        path = await asyncio.to_thread(resolve, self._model, settings.cache_dir, log.info)
        self._artifact = await _approved(self._model, path, ApprovalConfig.model_validate(approval), settings)
        from service.engine.vllm_engine import VLLMEngine  # only model replicas load vLLM
        from service.serve.reaper import Reaper

        self._reaper = Reaper()  # the engine's processes die with this replica, even a SIGKILLed one
        self._reaper.start()

        self._tracing = build_tracing(settings.tracing, os.environ, "replica")
        otlp = (otlp_traces_endpoint(os.environ), otlp_protocol(os.environ)) if self._tracing else None
        self._engine = VLLMEngine(self._model, path, otlp)
        await self._engine.start()
        self._app = ReplicaApp(self._engine, token, self._model.max_ongoing_requests, max_body_bytes, self._tracing)
        host = settings.replica_host or ray.util.get_node_ip_address()
        sock = http.bind(host, 0)
        self._server, self._task = await http.start(self._app, sock, limits=settings.door_limits())
        netloc = f"[{host}]" if ":" in host else host  # IPv6 node addresses
        self._url = f"http://{netloc}:{sock.getsockname()[1]}"
        await self._announce()
        self._heartbeat = asyncio.create_task(self._heartbeat_forever())
        log.info(
            "model %s replica %s ready at %s in %.1fs",
            self._model.id,
            self._replica_id,
            self._url,
            time.monotonic() - started,
        )

    async def _announce(self) -> None:
        artifact = self._artifact.digest if self._artifact else ""
        await self._registry.heartbeat.remote(self._model.id, self._replica_id, self._url, artifact)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            try:
                await self._announce()
            except Exception as error:  # noqa: BLE001 - the registry may be restarting
                log.warning("heartbeat to registry failed: %s", error)

    async def wait_ready(self) -> str:
        """Called through the handle to scale up from zero; returns this replica's URL."""
        return self._url

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {INFLIGHT_METRIC: float(self._app.inflight)}

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError("the replica's HTTP server stopped")
        await self._engine.check_health()

    async def __del__(self) -> None:
        if not hasattr(self, "_heartbeat"):  # stopped while it started (a scale-down before it was ready)
            log.info("a model replica stopped before it was ready: its reaper ends what its engine started")
            return  # it never announced itself, so it serves nothing; its process ends next
        self._heartbeat.cancel()
        try:
            await self._registry.remove.remote(self._replica_id)
        except Exception as error:  # noqa: BLE001 - best effort: the entry expires anyway
            log.warning("deregistering failed: %s", error)
        await _drain(lambda: self._app.inflight, self._drain_timeout_s)
        await http.stop(self._server, self._task)
        await self._engine.shutdown()
        await asyncio.to_thread(self._reaper.stop)  # the engine stopped its processes itself
        if self._tracing is not None:
            self._tracing.shutdown()


@serve.deployment
class Ingress:
    """The public OpenAI endpoint of the service (one per node or more, sharing the port)."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async __init__
        self, config: dict[str, Any], token: str, registry: Any, models: dict[str, Any]
    ) -> None:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        self._config = ServiceConfig.model_validate(config)
        self._directory = RegistryDirectory(registry, models)
        try:
            await self._directory.refresh()
        except Exception as error:  # noqa: BLE001 - /ready says so until the registry answers
            log.warning("registry not reachable yet: %s", error)
        self._directory.start()
        self._drain_follower = asyncio.create_task(self._follow_drain(registry))
        self._governor = None
        self._servers: list[tuple[Any, asyncio.Task[None]]] = []
        metrics = ServiceMetrics()
        if settings.governance == "on":
            self._governor = build_governor(self._config, settings, metrics)
            self._governor.trail.artifact_of = self._directory.artifact  # audit records name the served artifact
            await self._governor.start()
        else:
            log.warning("GOVERNANCE IS OFF: no API keys, limits, kill switch or audit. Local development only.")
        self._tracing = build_tracing(settings.tracing, os.environ, "ingress")
        self._app = IngressApp(
            self._config,
            self._directory,
            Upstream(token, read_timeout_s=self._config.ingress.upstream_read_timeout_s),
            self._governor,
            settings.trusted_proxies,
            metrics,
            self._tracing,
        )
        door = settings.door_limits()  # every port of this process: API, admin and metrics
        await self._start_metrics(metrics, door)
        ingress = self._config.ingress
        sock = http.bind(ingress.host, ingress.port, reuse_port=True)
        self._server, self._task = await http.start(self._app, sock, lifespan="on", limits=door)
        if self._governor is not None:
            admin = self._config.admin
            admin_app = AdminApp(self._governor, self._governor.store, admin_token(settings))
            admin_sock = http.bind(admin.host, admin.port, reuse_port=True)
            self._servers.append(await http.start(admin_app, admin_sock, limits=door))
            log.info("Paddock admin API listening on http://%s:%d", admin.host, admin.port)
        _freeze_heap()
        log.info("Paddock ingress listening on http://%s:%d", ingress.host, ingress.port)

    async def _start_metrics(self, metrics: ServiceMetrics, door: DoorLimits) -> None:
        """Paddock's metrics on ``metrics.port`` + this replica's rank on its node (one port per process)."""
        config = self._config.metrics
        if not config.enabled:
            return
        governor = self._governor
        refresh = (lambda: refresh_tenant_gauges(governor, metrics.tenants)) if governor else None
        port = config.port + serve.get_replica_context().rank.local_rank
        self._servers.append(await http.start(MetricsApp(metrics, refresh), http.bind(config.host, port), limits=door))
        log.info("Paddock metrics on http://%s:%d/metrics", config.host, port)

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError("the ingress HTTP server stopped")

    async def _follow_drain(self, registry: Any) -> None:
        """Once the registry says the service drains: refuse new requests, and report what is still in flight."""
        await self._directory.drain_requested.wait()
        self._app.draining = True
        me = serve.get_replica_context().replica_id.unique_id
        log.info("draining: new requests are refused, %d in flight", self._app.inflight)
        while True:
            try:
                await registry.report_ingress.remote(me, self._app.inflight)
            except Exception as error:  # noqa: BLE001 - the driver then waits out its deadline
                log.warning("reporting the drain failed: %s", error)
            await asyncio.sleep(DRAIN_REPORT_INTERVAL_S)

    async def __del__(self) -> None:
        self._app.draining = True
        self._drain_follower.cancel()
        await _drain(lambda: self._app.inflight, self._config.ingress.drain_timeout_s)
        await http.stop(self._server, self._task)
        for server in self._servers:
            await http.stop(*server)
        if self._governor is not None:
            await self._governor.stop()
        await self._directory.stop()
        if self._tracing is not None:
            self._tracing.shutdown()


async def _approved(model: ModelConfig, path: Path, approval: ApprovalConfig, settings: Settings) -> Artifact | None:
    """The model folder, verified under its approval policy (off the event loop: hashing takes seconds)."""
    from service.models.approval import check  # model_signing: only model replicas need it

    artifact = await asyncio.to_thread(check, model, path, approval, settings.cache_dir)
    if artifact is not None:
        log.log(logging.INFO if artifact.approved else logging.WARNING, "model %s: %s", model.id, artifact.summary())
    return artifact


def _freeze_heap() -> None:
    """Keep the start-up heap out of full GC collections (long pauses on the data path)."""
    gc.collect()
    gc.freeze()


async def _drain(inflight: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while inflight() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
