"""Real data for the dashboards' picture: Paddock under mixed load, scraped by a real Prometheus.

    python -m bench.dashboards --minutes 4 --out docs/dashboards.png

Starts Paddock (the embedded default models) with three tenants, a Prometheus
scraping Paddock's metrics port and Ray's metrics agent, and drives streamed
chats and embeddings from every tenant (one of them over its request rate, and
one key killed for a while), then renders the dashboards' main panels with
``scripts/render_dashboards.py`` from what Prometheus recorded.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from openai import OpenAI

from bench.servers import ROOT, Server, _spawn
from harness.ports import free_port
from harness.prometheus import start_prometheus
from service.governance.keys import hash_key, new_key

CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
TENANTS = {
    "acme": {"limits": {"tokens_per_minute": 60000, "tokens_per_day": 40000}},
    "globex": {"limits": {"requests_per_minute": 40, "tokens_per_day": 15000}},
    "initech": {"limits": {"requests_per_minute": 6}},
}
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
    "List three prime numbers.",
]


def governance(state: Path) -> dict[str, str]:
    keys = {tenant: new_key() for tenant in TENANTS}
    tenants = [
        {"id": t, "models": ["*"], **spec, "keys": [{"id": f"key-{t}", "hash": hash_key(keys[t])}]}
        for t, spec in TENANTS.items()
    ]
    state.mkdir(parents=True, exist_ok=True)
    (state / "governance.yaml").write_text(yaml.safe_dump({"version": 1, "tenants": tenants}, sort_keys=False))
    return keys


def start(scratch: Path) -> tuple[Server, dict[str, str], dict[str, int]]:
    keys = governance(scratch / "state")
    ports = {name: free_port() for name in ("api", "admin", "metrics", "ray")}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PADDOCK_PORT": str(ports["api"]),
        "PADDOCK_ADMIN_PORT": str(ports["admin"]),
        "PADDOCK_METRICS_PORT": str(ports["metrics"]),
        "PADDOCK_RAY_METRICS_PORT": str(ports["ray"]),
        "PADDOCK_ADMIN_TOKEN": "demo-admin",
        "PADDOCK_STATE_DIR": str(scratch / "state"),
        "PADDOCK_RAY_TEMP_DIR": str(scratch / "ray"),
        "PADDOCK_AUDIT_STDOUT": "false",
    }
    process, log = _spawn("paddock", [str(ROOT / ".venv/bin/paddock"), "serve"], env, scratch)
    server = Server("Paddock", f"http://127.0.0.1:{ports['api']}", process, log, scratch=scratch)
    deadline = time.monotonic() + 900
    while "Paddock is serving on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"Paddock did not start; see {log}")
        time.sleep(1)
    return server, keys, ports


def worker(base: str, key: str, tenant: str, stop: threading.Event, seed: int) -> None:
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            if rng.random() < 0.15:
                client.embeddings.create(model=EMBED, input=rng.choice(PROMPTS))
            else:
                stream = client.chat.completions.create(
                    model=CHAT,
                    messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
                    max_tokens=rng.randint(16, 64),
                    stream=True,
                )
                for _ in stream:
                    pass
        except Exception:  # noqa: BLE001 - refusals (429, 503) are part of the picture
            time.sleep(1.0 if tenant == "initech" else 0.3)
        time.sleep(rng.uniform(0.0, 0.5))


def admin(ports: dict[str, int], action: str, scope: str, target: str) -> None:
    import json
    import urllib.request

    body = json.dumps({"scope": scope, "id": target, "reason": "dashboard demo"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{ports['admin']}/admin/v1/{action}", data=body, method="POST")
    request.add_header("authorization", "Bearer demo-admin")
    request.add_header("content-type", "application/json")
    urllib.request.urlopen(request, timeout=10).close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboards.png")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="pd-dash-", dir="/tmp"))
    server, keys, ports = start(scratch)
    prometheus = None
    try:
        targets = {"paddock": f"127.0.0.1:{ports['metrics']}", "ray": f"127.0.0.1:{ports['ray']}"}
        prometheus = start_prometheus(targets, scratch / "prometheus", interval="2s")
        stop = threading.Event()
        workers = [("acme", 2), ("globex", 1), ("initech", 1)]
        threads = [
            threading.Thread(target=worker, args=(server.base_url, keys[t], t, stop, i * 10 + j), daemon=True)
            for i, (t, n) in enumerate(workers)
            for j in range(n)
        ]
        for thread in threads:
            thread.start()
        duration = args.minutes * 60
        time.sleep(duration * 0.5)
        admin(ports, "disable", "key", "key-globex")  # a kill, visible on the overview
        time.sleep(duration * 0.2)
        admin(ports, "enable", "key", "key-globex")
        time.sleep(duration * 0.3)
        stop.set()
        for thread in threads:
            thread.join(150)
        time.sleep(5)  # two more scrapes
        render = [sys.executable, str(ROOT / "scripts/render_dashboards.py"), "--prometheus", prometheus.url]
        render += ["--minutes", str(args.minutes + 1), "--out", str(args.out)]
        subprocess.run(render, check=True, cwd=ROOT)
        print(f"wrote {args.out}")
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()  # and any Ray daemon left in its scratch directory, which it removes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
