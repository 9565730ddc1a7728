"""One real Paddock stack (Ray Serve + vLLM CPU + SmolLM2 + MiniLM) shared by every e2e test.

It is started with the real CLI (``paddock serve``) in its own process group
and stopped at the end of the session: SIGINT (Paddock shuts Serve and Ray
down), then SIGKILL for anything left in the group or in its Ray directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from harness.ports import free_port
from harness.processes import kill_strays, stop_process_group
from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("paddock-e2e.yaml")
START_TIMEOUT_S = 900
INTERNAL_TOKEN = "e2e-internal-token"
ADMIN_TOKEN = "e2e-admin-token"
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"

GUARDED_SYSTEM_PROMPT = "Policy 7731: answer only about the weather."
# A greedy question SmolLM2 answers with "Paris": the tests that wait for a replacement replica ask it.
CAPITAL_QUESTION = {
    "model": CHAT,
    "temperature": 0,
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}

# Tenants of the e2e governance file; each key name maps to (tenant, entry fields).
TENANTS = [
    {"id": "acme", "models": ["*"], "parameters": {"allowed_fields": ["ignore_eos", "return_token_ids"]}},
    {"id": "globex", "models": [CHAT], "audit": {"include_text": True}},
    {
        "id": "strict",
        "models": [CHAT],
        "limits": {"requests_per_minute": 3},
        "parameters": {"max_output_tokens": 8, "output_tokens_over_cap": "reject", "max_n": 1},
    },
    {"id": "thrifty", "models": [CHAT], "limits": {"tokens_per_day": 300}},
    {"id": "frozen", "enabled": False, "models": ["*"]},
    {
        "id": "guarded",
        "models": [CHAT],
        "parameters": {"system_prompt": GUARDED_SYSTEM_PROMPT, "max_prompt_tokens": 64},
    },
    {
        "id": "rawtokens",
        "models": [CHAT],
        "parameters": {"special_tokens": "allow", "allowed_fields": ["return_token_ids"]},
    },
    {"id": "metered", "models": [CHAT], "limits": {"requests_per_minute": 2, "tokens_per_day": 100000}},
    # The fuzzer's (test_fuzzer_e2e.py): every model, answers of at most 8 tokens, so the budget goes on requests.
    {"id": "fuzz", "models": ["*"], "parameters": {"max_output_tokens": 8, "max_prompt_tokens": 1024, "max_batch": 4}},
]
KEYS = {
    "acme": ("acme", {}),
    "acme-kill": ("acme", {}),
    "globex": ("globex", {}),
    "strict": ("strict", {}),
    "thrifty": ("thrifty", {}),
    "frozen": ("frozen", {}),
    "guarded": ("guarded", {}),
    "rawtokens": ("rawtokens", {}),
    "metered": ("metered", {}),
    "metered-kill": ("metered", {}),
    "fuzz": ("fuzz", {}),
    "expired": ("acme", {"expires": "2020-01-01T00:00:00Z"}),
    "disabled": ("acme", {"enabled": False}),
}


@dataclass
class Stack:
    base_url: str
    admin_url: str
    process: subprocess.Popen[str]
    ray_dir: Path
    state_dir: Path
    governance_file: Path
    keys: dict[str, str]
    metrics_url: str = ""
    ray_metrics_url: str = ""
    traces: OtlpReceiver | None = None
    log: list[str] = field(default_factory=list)

    def client(self, key: str = "acme", **kw: object) -> OpenAI:
        return OpenAI(base_url=self.base_url + "/v1", api_key=self.keys[key], max_retries=0, **kw)  # type: ignore[arg-type]

    def http(self, key: str | None = "acme", **kw: object) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, **kw)  # type: ignore[arg-type]

    def admin(self, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, object]:
        import json

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.admin_url + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {ADMIN_TOKEN}")
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def audit_records(self) -> list[dict[str, object]]:
        import json

        return [
            json.loads(line)
            for path in sorted((self.state_dir / "audit").glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if line
        ]

    def replica_urls(self, model_id: str) -> list[str]:
        pattern = re.compile(rf"model {re.escape(model_id)} replica \S+ ready at (http://\S+) in")
        return [m.group(1) for line in list(self.log) for m in [pattern.search(line)] if m]

    def replica_status(self, url: str) -> dict[str, object]:
        import json

        request = urllib.request.Request(url + "/internal/health", headers={"x-paddock-internal-token": INTERNAL_TOKEN})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)


def _pump(process: subprocess.Popen[str], log: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        log.append(line)
        sys.stderr.write(line) if os.environ.get("PADDOCK_E2E_VERBOSE") else None


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise RuntimeError("paddock serve exited:\n" + "".join(stack.log[-60:]))
        if any("Paddock is serving on" in line for line in stack.log):
            return
        time.sleep(0.5)
    raise TimeoutError("paddock serve did not become ready:\n" + "".join(stack.log[-60:]))


def _stop(stack: Stack) -> None:
    stop_process_group(stack.process)
    kill_strays(stack.ray_dir)
    shutil.rmtree(stack.ray_dir, ignore_errors=True)
    shutil.rmtree(stack.state_dir, ignore_errors=True)


@contextlib.contextmanager
def serve_stack(
    config_file: Path,
    ports: tuple[int, int, int],
    keys: dict[str, str],
    state_dir: Path,
    environ: dict[str, str | None] | None = None,
    log_name: str | None = None,
    on_start: Callable[[Stack], None] | None = None,
) -> Iterator[Stack]:
    """``paddock serve --config config_file`` with governance on and tracing off, in its own process group.

    ``ports`` are the API, admin and metrics ports the config names; ``state_dir`` holds the config and
    ``governance.yaml`` (``keys`` are its keys) and is removed at the end with the Ray directory made here. ``environ`` adds to (or, with a ``None`` value, removes from) the
    environment; ``log_name`` keeps the stack's output in the temp directory after the stop; ``on_start`` is
    called as soon as the process runs, before it is ready.
    """
    port, admin_port, metrics_port = ports
    ray_dir = Path(tempfile.mkdtemp(prefix="pd-ray-", dir="/tmp"))
    governance_file = state_dir / "governance.yaml"
    env = {
        **os.environ,
        "PADDOCK_PORT": str(port),
        "PADDOCK_ADMIN_PORT": str(admin_port),
        "PADDOCK_METRICS_PORT": str(metrics_port),
        "PADDOCK_RAY_METRICS_PORT": str(free_port()),
        "PADDOCK_ADMIN_TOKEN": ADMIN_TOKEN,
        "PADDOCK_STATE_DIR": str(state_dir),
        "PADDOCK_GOVERNANCE_FILE": str(governance_file),
        "PADDOCK_RAY_TEMP_DIR": str(ray_dir),
        "PADDOCK_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "PADDOCK_TRACING": "off",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name, value in (environ or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/paddock"), "serve", "--config", str(config_file)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack = Stack(
        base_url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        process=process,
        ray_dir=ray_dir,
        state_dir=state_dir,
        governance_file=governance_file,
        keys=keys,
    )
    threading.Thread(target=_pump, args=(process, stack.log), daemon=True).start()
    try:
        if on_start is not None:
            on_start(stack)
        _wait_ready(stack)
        yield stack
    finally:
        if log_name:
            (Path(tempfile.gettempdir()) / log_name).write_text("".join(stack.log))
        _stop(stack)


def write_governance(path: Path) -> dict[str, str]:
    """The e2e tenants with freshly made keys; returns key name -> key."""
    import yaml

    from service.governance.keys import hash_key, new_key

    tenants = {t["id"]: {**t, "keys": []} for t in TENANTS}
    keys = {}
    for name, (tenant, extra) in KEYS.items():
        keys[name] = new_key()
        tenants[tenant]["keys"].append({"id": f"key-{name}", "hash": hash_key(keys[name]), **extra})
    path.write_text(yaml.safe_dump({"version": 1, "tenants": list(tenants.values())}, sort_keys=False))
    return keys


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """The OTLP receiver every process of the e2e stack sends its spans to (over gRPC)."""
    receiver = OtlpReceiver()
    receiver.start_grpc()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(otlp: OtlpReceiver) -> Iterator[Stack]:
    port, admin_port, metrics_port, ray_metrics_port = free_port(), free_port(), free_port(), free_port()
    ray_dir = Path(tempfile.mkdtemp(prefix="pd-ray-", dir="/tmp"))
    state_dir = Path(tempfile.mkdtemp(prefix="pd-state-", dir="/tmp"))
    governance_file = state_dir / "governance.yaml"
    keys = write_governance(governance_file)
    env = {
        **os.environ,
        "PADDOCK_PORT": str(port),
        "PADDOCK_ADMIN_PORT": str(admin_port),
        "PADDOCK_METRICS_PORT": str(metrics_port),
        "PADDOCK_RAY_METRICS_PORT": str(ray_metrics_port),
        "PADDOCK_ADMIN_TOKEN": ADMIN_TOKEN,
        "PADDOCK_STATE_DIR": str(state_dir),
        "PADDOCK_GOVERNANCE_FILE": str(governance_file),
        "PADDOCK_TRUSTED_PROXIES": '["127.0.0.1/32"]',
        "PADDOCK_RAY_TEMP_DIR": str(ray_dir),
        "PADDOCK_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "PADDOCK_TRACING": "on",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp.grpc_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/paddock"), "serve", "--config", str(CONFIG)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack = Stack(
        base_url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        process=process,
        ray_dir=ray_dir,
        state_dir=state_dir,
        governance_file=governance_file,
        keys=keys,
        metrics_url=f"http://127.0.0.1:{metrics_port}",
        ray_metrics_url=f"http://127.0.0.1:{ray_metrics_port}",
        traces=otlp,
    )
    threading.Thread(target=_pump, args=(process, stack.log), daemon=True).start()
    try:
        _wait_ready(stack)
        yield stack
    finally:
        _stop(stack)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
