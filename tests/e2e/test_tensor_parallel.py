"""A tensor-parallel replica served through Paddock on CPU: the Mistral twin at tensor_parallel_size 2.

CPU processes stand in for GPUs: vLLM's multiprocessing executor runs the two tensor-parallel workers as
processes of the replica (vLLM's CPU backend has no Ray executor: tests/engine/test_vllm_ray_on_cpu.py),
each bound to its own core by Paddock (``VLLM_CPU_OMP_THREADS_BIND``, from the replica's cores). The
stack is its own (``paddock serve``, governance on), started for this module and stopped at its end, so
that the first test can watch its readiness from the start and the last one can stop it with SIGTERM, as
Kubernetes does, while streams run.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from harness import twins
from harness.ports import free_port
from service.config.schema import ModelConfig
from service.engine.vllm_engine.args import engine_env
from tests.e2e.conftest import Stack, _stop, serve_stack
from tests.e2e.streams import Stream, long_stream
from tests.e2e.twins.conftest import ALLOWED_FIELDS, write_governance

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TWIN = twins.TWINS["mistral"]  # dense: 4 heads / 2 KV heads split 2 ways; its real Tekken tokenizer
MODEL = "twin-mistral-tp2"
DRAIN_TIMEOUT_S = 120  # the streams below take 5-40 s on this host, by its load: they must end within it
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hello! Who are you?"}],
    "max_tokens": 8,
    "temperature": 0,
}


def engine_processes(ray_dir: Path) -> dict[int, str]:
    """vLLM processes (EngineCore, workers) of the stack whose Ray temp dir is ``ray_dir``, pid -> title.

    Their titles name no directory (vLLM renames them), so they are found by the stack's environment,
    which every process of it inherits."""
    marker = f"PADDOCK_RAY_TEMP_DIR={ray_dir}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if title.startswith("VLLM::") and marker in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = title
        except OSError:
            continue
    return found


@dataclass
class ReadinessProbe:
    """Polls ``/ready`` from the moment ``paddock serve`` starts, as a pod's probe does; when it first
    answers 200, asks at once what the ingress knows of the model."""

    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, error message) until the first 200
    card_at_ready: dict[str, object] = field(default_factory=dict)

    def start(self, stack: Stack) -> None:
        threading.Thread(target=self._poll, args=(stack,), daemon=True).start()

    def _poll(self, stack: Stack) -> None:
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=stack.base_url, timeout=5) as http:
            while time.monotonic() < deadline and stack.process.poll() is None:
                try:
                    response = http.get("/ready")
                except httpx.TransportError:
                    time.sleep(0.1)
                    continue
                message = "" if response.status_code == 200 else response.json()["error"]["message"]
                self.answers.append((response.status_code, message))
                if response.status_code == 200:
                    auth = {"authorization": f"Bearer {stack.keys['acme']}"}
                    self.card_at_ready = http.get(f"/v1/models/{MODEL}", headers=auth).json()
                    return
                time.sleep(0.1)


PROBE = ReadinessProbe()


@pytest.fixture(scope="module")
def tp_stack() -> Iterator[Stack]:
    entry = twins.model_entry(TWIN, twins.make_twin(TWIN.family), cpus=1)
    entry["id"] = MODEL
    entry.pop("tool_call_parser", None)  # parsers are the twins' tests; this one is about the workers
    entry["resources"] = {"cpus": 1, "tensor_parallel_size": 2}
    entry["max_model_len"] = 2048  # room for streams long enough to outlast the refusal on a quiet host
    port, admin_port, metrics_port = ports = free_port(), free_port(), free_port()
    state_dir = Path(tempfile.mkdtemp(prefix="pd-state-", dir="/tmp"))
    keys = write_governance(state_dir / "governance.yaml", [*ALLOWED_FIELDS, "ignore_eos"])  # long streams
    config_file = state_dir / "tp2.yaml"
    ingress = {"port": port, "cpus": 0.25, "drain_timeout_s": DRAIN_TIMEOUT_S}
    config = {"models": [entry], "ingress": ingress, "admin": {"port": admin_port}}
    config_file.write_text(yaml.safe_dump({**config, "metrics": {"port": metrics_port}}, sort_keys=False))
    # Paddock's own binding is under test: none from the environment.
    unbound: dict[str, str | None] = {"VLLM_CPU_OMP_THREADS_BIND": None}
    with serve_stack(config_file, ports, keys, state_dir, unbound, "paddock-tp2-e2e.log", PROBE.start) as stack:
        yield stack


def test_ready_only_once_the_model_serves(tp_stack: Stack) -> None:
    """Issue 16: /ready answered 200 as soon as the ingress reached the registry, long before the model loaded,
    so a rolling update sent traffic to a pod that then made it wait. Now the probe sees 503s naming the
    model while it loads, and at the first 200 the ingress already has a replica of it."""
    deadline = time.monotonic() + 10
    while not PROBE.card_at_ready and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting = [message for status, message in PROBE.answers if status == 503]
    assert any(f"no replica serves {MODEL} yet" in message for message in waiting), PROBE.answers
    assert PROBE.answers[-1][0] == 200
    assert PROBE.card_at_ready["status"] == {"state": "ready", "replicas": 1}, PROBE.card_at_ready


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def test_the_replica_runs_two_tensor_parallel_workers(tp_stack: Stack) -> None:
    """One EngineCore, a worker per tensor-parallel rank, each rank bound to its share of the cores."""
    processes = engine_processes(tp_stack.ray_dir)
    assert sorted(processes.values()) == ["VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1"], processes
    [core] = [pid for pid, title in processes.items() if title == "VLLM::EngineCore"]
    model = ModelConfig.model_validate(
        {"id": MODEL, "source": {"path": "/m"}, "resources": {"tensor_parallel_size": 2}, "kv_cache_memory": "64MiB"}
    )
    expected = engine_env(model, os.sched_getaffinity(0), {})["VLLM_CPU_OMP_THREADS_BIND"]  # this host's cores
    assert environ(core)["VLLM_CPU_OMP_THREADS_BIND"] == expected


def test_chat_and_stream_answer_the_same(tp_stack: Stack) -> None:
    """Greedy decoding: the streamed deltas add up to the whole answer, token for token."""
    client = tp_stack.client("acme", timeout=120)
    answer = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    choice = answer.choices[0]
    assert answer.model == MODEL and choice.finish_reason in ("length", "stop")
    assert isinstance(choice.message.content, str) and 1 <= answer.usage.completion_tokens <= 8
    streamed, events = "", []
    with (
        tp_stack.http(timeout=httpx.Timeout(120, connect=10)) as http,
        http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(line[len("data:") :].strip())
    assert events[-1] == "[DONE]"
    for data in events[:-1]:
        event = json.loads(data)
        assert "error" not in event, event
        for delta in event.get("choices", []):
            streamed += (delta.get("delta") or {}).get("content") or ""
    assert streamed == choice.message.content


STREAM = long_stream(MODEL, 1500)  # 5 s here when quiet, 45 s under CI's load


def test_sigterm_drains_running_streams_and_leaves_no_engine_process(tp_stack: Stack) -> None:
    """Last in this module. SIGTERM, what Kubernetes sends, to `paddock serve` with three streams running:
    new requests are refused at once (503 with retry-after, /ready 503), every running stream ends whole
    ([DONE], all its tokens), `paddock serve` exits 0, and no EngineCore or worker is left behind."""
    assert len(engine_processes(tp_stack.ray_dir)) == 3
    streams = [Stream(tp_stack, STREAM) for _ in range(3)]
    threads = [stream.start() for stream in streams]
    for stream in streams:
        assert stream.first_token.wait(120) and not stream.failure, stream.failure
    signalled = time.monotonic()
    tp_stack.process.send_signal(signal.SIGTERM)
    with tp_stack.http(timeout=10) as http:
        while (ready := http.get("/ready")).status_code == 200 and time.monotonic() - signalled < 10:
            time.sleep(0.05)
        draining_after = time.monotonic() - signalled
        refused = http.post("/v1/chat/completions", json=CHAT)
        refused_at = time.monotonic()
    assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"], ready.text
    assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text
    assert refused.json()["error"]["code"] == "service_unavailable"
    print(f"the ingress refused new requests {draining_after:.2f}s after SIGTERM")
    for thread in threads:
        thread.join(120)
    assert all(s.ended_at > refused_at for s in streams), "a stream ended before the refusal: make them longer"
    assert [stream.problem() for stream in streams] == ["", "", ""]
    assert tp_stack.process.wait(timeout=120) == 0
    drained = [line for line in tp_stack.log if line.startswith("drained in")]
    assert drained and "still in flight" not in drained[0], drained  # the driver waited for them, not Serve
    deadline = time.monotonic() + 30
    while (left := engine_processes(tp_stack.ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    _stop(tp_stack)  # whatever is left of Ray; the fixture's own stop then finds nothing
    assert not left, f"left behind by a clean stop: {left}"
    assert not engine_processes(tp_stack.ray_dir)
