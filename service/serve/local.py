"""``paddock serve``: local Ray (or an existing cluster), the Serve app, and a clean stop."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, MutableMapping

from service.config.schema import ServiceConfig
from service.config.settings import Settings

log = logging.getLogger(__name__)
APP_NAME = "paddock"
DRAIN_POLL_S = 0.2
_PATH_SETTINGS = (
    "state_dir",
    "governance_file",
    "audit_dir",
    "admin_token_file",
    "key_secret_file",
    "audit_key_file",
    "state_store_password_file",
    "state_store_ca_file",
)
# Ray Serve's own control plane, tuned for a small host where the engine needs every cycle
# (each is a default: a value already in the environment wins). The data path never goes
# through Ray (README, "Architecture"), so these only lower Ray's background CPU:
# the controller loop (0.1 s by default) and the replicas' autoscaling-metrics push (100 ms)
# run less often, and replica code shares the replica's main event loop instead of a second
# thread (Ray's own RAY_SERVE_THROUGHPUT_OPTIMIZED mode does the same). Measured on 2 cores:
# Ray's idle CPU fell from ~28 % to ~20 % of a core and Paddock's c=16 output rate rose ~20 %
# (docs/benchmarks.md).
RAY_TUNING = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}


def apply_ray_tuning(environ: MutableMapping[str, str]) -> None:
    """Set RAY_TUNING's values where ``environ`` has none (before Ray starts: it reads them once)."""
    for name, value in RAY_TUNING.items():
        environ.setdefault(name, value)


def logical_cpus(config: ServiceConfig) -> int:
    """Enough logical CPUs for every replica the config may start (Ray waits forever otherwise)."""
    needed = config.ingress.cpus * config.ingress.replicas
    needed += sum(m.resources.cpus * m.autoscaling.max_replicas for m in config.models)
    return max(math.ceil(needed), os.cpu_count() or 1)


def start_ray(config: ServiceConfig, settings: Settings) -> None:
    import ray

    env = {"PADDOCK_CACHE_DIR": str(settings.cache_dir.resolve())}
    for name in _PATH_SETTINGS:  # relative paths mean the driver's working directory
        value = getattr(settings, name)
        if value is not None:
            env[f"PADDOCK_{name.upper()}"] = str(value.resolve())
    if settings.ray_address is None:
        env["PADDOCK_REPLICA_HOST"] = settings.replica_host or "127.0.0.1"
    if settings.internal_token:
        env["PADDOCK_INTERNAL_TOKEN"] = settings.internal_token
    os.environ.update(env)  # local Ray workers inherit the driver's environment
    apply_ray_tuning(os.environ)
    local = settings.ray_address is None
    ray.init(
        address=settings.ray_address,
        # Local Ray stays on loopback: no Ray port (GCS, dashboard, job API) beyond this machine.
        _node_ip_address=(settings.ray_node_ip or "127.0.0.1") if local else None,
        _metrics_export_port=settings.ray_metrics_port or None if local else None,
        num_cpus=settings.ray_num_cpus or logical_cpus(config) if local else None,
        include_dashboard=settings.ray_dashboard,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": env},
        _temp_dir=str(settings.ray_temp_dir) if settings.ray_temp_dir and local else None,
        log_to_driver=True,
    )


def wait_ready(url: str, timeout_s: float, stop: threading.Event | None = None) -> None:
    """Until ``url``'s /ready answers 200 (every model with ``min_replicas`` >= 1 serving), or ``stop`` is set."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.2)
    if not stop.is_set():
        raise TimeoutError(f"{url}/ready did not answer 200 within {timeout_s:.0f}s")


def deploy(
    config: ServiceConfig,
    settings: Settings,
    timeout_s: float = 900.0,
    after_ray: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Start Ray and the app; return the base URL once the ingress is ready (or as soon as ``stop`` is set).

    ``after_ray`` runs once Ray is up: ``ray.init`` installs Ray's own SIGTERM handler (it aborts the
    driver, cutting every stream), so the caller re-installs its handlers there.
    """
    from ray import serve

    from service.serve.builder import build_app

    start_ray(config, settings)
    if after_ray is not None:
        after_ray()
    serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1"})
    serve.run(build_app(config, settings), name=APP_NAME, route_prefix=None, blocking=False)
    url = f"http://{config.ingress.host}:{config.ingress.port}"
    wait_ready(url, timeout_s, stop)
    return url


def drain(config: ServiceConfig, force: threading.Event) -> dict[str, int]:
    """Make every ingress refuse new requests (503 with ``retry-after``), then wait for those in flight.

    Waits up to ``ingress.drain_timeout_s``, or until ``force`` is set (a second signal). Returns the last
    drain status: how many ingresses reported, and their requests still in flight.
    """
    from ray import serve

    registry = serve.get_deployment_handle("Registry", app_name=APP_NAME)
    registry.drain.remote().result(timeout_s=10)
    deadline = time.monotonic() + config.ingress.drain_timeout_s
    status = {"ingresses": 0, "inflight": 0}
    announced = False
    while not force.is_set() and time.monotonic() < deadline:
        status = registry.drain_status.remote().result(timeout_s=5)
        if status["ingresses"] >= config.ingress.replicas and status["inflight"] == 0:
            break
        if status["inflight"] and not announced:
            print(
                f"draining: waiting for {status['inflight']} request(s) in flight (a second signal stops now)…",
                flush=True,
            )
            announced = True
        force.wait(DRAIN_POLL_S)
    return status


def shutdown() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _prepare_governance(settings: Settings) -> str:
    """Create the local governance files if needed; return what a new user should read."""
    if settings.governance == "off":
        log.warning("GOVERNANCE IS OFF (PADDOCK_GOVERNANCE=off): no keys, limits, kill switch or audit.")
        return "Governance is OFF: local development only; every request is served without a key."
    from service.governance.factory import ensure_local_files

    policy, token = ensure_local_files(settings)
    return (
        f"Governance is on: every API call needs a key. Tenants and keys: {policy}\n"
        f"  Get a key:   .venv/bin/paddock keys create --tenant local --append {policy}\n"
        f"  Use it:      OPENAI_BASE_URL={{url}}/v1 OPENAI_API_KEY=pk-…\n"
        f"  Admin API:   {{admin}} (token in {token}); e.g. .venv/bin/paddock admin status\n"
        f"  Audit log:   {settings.resolved_audit_dir()}"
    )


def models_summary(config: ServiceConfig) -> str:
    return ", ".join(f"{m.id} ({m.task})" for m in config.models)


def serve_forever(config: ServiceConfig, settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop every process that was started.

    ``config`` already carries the settings' overrides (the CLI applies ``apply_settings``), so the URL
    printed is the one ``build_app`` serves.
    """
    stop, force = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        (force if stop.is_set() else stop).set()

    def on_stop_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    on_stop_signals()
    try:
        governance = _prepare_governance(settings)
        url = deploy(config, settings, after_ray=on_stop_signals, stop=stop)
        if not stop.is_set():
            print(f"Paddock is serving on {url}/v1 — models: {models_summary(config)}", flush=True)
            print(governance.format(url=url, admin=f"http://{config.admin.host}:{config.admin.port}"), flush=True)
        stop.wait()
        print("stopping Paddock: refusing new requests…", flush=True)
        _drain_quietly(config, force)
    finally:
        shutdown()


def _drain_quietly(config: ServiceConfig, force: threading.Event) -> None:
    started = time.monotonic()
    try:
        status = drain(config, force)
    except Exception as error:  # noqa: BLE001 - an app that never started has nothing to drain
        log.warning("draining failed (%s): stopping at once", error)
        return
    left = f", {status['inflight']} still in flight" if status["inflight"] else ""
    print(f"drained in {time.monotonic() - started:.1f}s{left}", flush=True)
