"""A real Prometheus server on loopback, scraping given targets (tests and the dashboard demo)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.ports import free_port


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def query(self, promql: str) -> list[dict[str, object]]:
        query = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as response:
            return json.load(response)["data"]["result"]

    def values(self, promql: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(promql)]  # type: ignore[index]

    def metric_names(self) -> set[str]:
        with urllib.request.urlopen(f"{self.url}/api/v1/label/__name__/values", timeout=10) as response:
            return set(json.load(response)["data"])

    def targets_up(self, expected: int) -> bool:
        assert self.process.poll() is None, f"prometheus exited; see {self.workdir / 'prometheus.log'}"
        try:
            up = self.values("up")
        except OSError:  # not listening yet
            return False
        return len(up) == expected and all(v == 1 for v in up)

    def stop(self, keep: bool = False) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_prometheus(targets: dict[str, str], workdir: Path, interval: str = "1s", timeout_s: float = 60) -> Prometheus:
    """Start Prometheus scraping ``{job: "host:port"}``; return once every target is up."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing: scripts/install-tools.sh installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, workdir)
    deadline = time.monotonic() + timeout_s
    try:
        while not prometheus.targets_up(len(targets)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus did not scrape {targets} within {timeout_s:.0f}s")
            time.sleep(0.5)
    except BaseException:
        prometheus.stop(keep=True)
        raise
    return prometheus
