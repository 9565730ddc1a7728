"""Start and stop the two servers under test: raw ``vllm serve`` and Paddock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.ports import free_port
from harness.processes import kill_strays, stop_process_group
from service.config.schema import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    scratch: Path | None = None
    api_key: str | None = None

    def stop(self) -> None:
        stop_process_group(self.process)
        if self.scratch is not None:
            kill_strays(self.scratch)
            shutil.rmtree(self.scratch, ignore_errors=True)


def _spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, log_path


def wait_http(server: Server, path: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        try:
            with urllib.request.urlopen(server.base_url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{server.name} not ready after {timeout_s:.0f}s; see {server.log_path}")


def raw_vllm_args(model: ModelConfig, path: Path) -> list[str]:
    """``vllm serve`` flags with the same engine settings Paddock's adapter uses."""
    args = [
        str(path),
        "--served-model-name",
        *model.names,
        "--dtype",
        model.dtype,
        "--enforce-eager",
    ]
    if model.max_model_len:
        args += ["--max-model-len", str(model.max_model_len)]
    if model.kv_cache_memory:
        args += ["--kv-cache-memory-bytes", str(int(model.kv_cache_memory))]
    for key, value in model.engine_args.items():
        if key == "enforce_eager":
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def start_raw_vllm(model: ModelConfig, path: Path, log_dir: Path) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.vllm_cli",
        "serve",
        *raw_vllm_args(model, path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process, log_path = _spawn("raw-vllm", argv, {**os.environ, "HF_HUB_OFFLINE": "1"}, log_dir)
    server = Server("raw vLLM", f"http://127.0.0.1:{port}", process, log_path)
    wait_http(server, "/health")
    return server


# The benchmark's tenant: governance on, with every counted limit set (high enough never to
# refuse), so each request pays for the real decision, lease, settlement and audit records.
BENCH_TENANT = {
    "id": "bench",
    "models": ["*"],
    "limits": {
        "requests_per_minute": 1_000_000,
        "tokens_per_minute": 1_000_000_000,
        "max_concurrent_requests": 10_000,
        "tokens_per_day": 10**12,
        "tokens_per_month": 10**13,
    },
    # what `vllm bench serve` sends beyond OpenAI's fields
    "parameters": {"allowed_fields": ["ignore_eos", "repetition_penalty"]},
}


def governance_for_bench(state_dir: Path) -> tuple[Path, str]:
    """A governance file with one bench key; returns its path and the key."""
    import yaml

    from service.governance.keys import hash_key, new_key

    key = new_key()
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "governance.yaml"
    tenant = {**BENCH_TENANT, "keys": [{"id": "bench", "hash": hash_key(key)}]}
    path.write_text(yaml.safe_dump({"version": 1, "tenants": [tenant]}, sort_keys=False))
    return path, key


def start_paddock(config_path: Path, log_dir: Path, extra_env: dict[str, str] | None = None) -> Server:
    """Start ``paddock serve``; ``extra_env`` overrides its environment (e.g. ``PADDOCK_RAY_METRICS_PORT``)."""
    port, admin_port = free_port(), free_port()
    ray_dir = Path(tempfile.mkdtemp(prefix="pd-bench-ray-", dir="/tmp"))
    governance, key = governance_for_bench(ray_dir / "state")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PADDOCK_PORT": str(port),
        "PADDOCK_ADMIN_PORT": str(admin_port),
        "PADDOCK_METRICS_PORT": str(free_port()),
        "PADDOCK_RAY_METRICS_PORT": str(free_port()),
        "PADDOCK_RAY_TEMP_DIR": str(ray_dir),
        "PADDOCK_STATE_DIR": str(ray_dir / "state"),
        "PADDOCK_GOVERNANCE_FILE": str(governance),
        **(extra_env or {}),
    }
    argv = [str(ROOT / ".venv/bin/paddock"), "serve", "--config", str(config_path)]
    process, log_path = _spawn("paddock", argv, env, log_dir)
    server = Server("Paddock", f"http://127.0.0.1:{port}", process, log_path, scratch=ray_dir, api_key=key)
    deadline = time.monotonic() + 900
    while "Paddock is serving on" not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Paddock did not start; see {log_path}")
        time.sleep(1)
    return server
