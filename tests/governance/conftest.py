"""Governance-layer fixtures: every store test runs against each real backend."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.ports import free_port
from service.governance.store import open_store

BACKENDS = ["local", "redis"]

_prefixes = itertools.count()


@dataclass
class RedisServer:
    """A real ``redis-server`` on loopback, owned by the tests (never a system one)."""

    directory: Path
    port: int
    persistent: bool = False
    password: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/install-tools.sh")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        auth = ["--requirepass", self.password] if self.password else []
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence, *auth]
            + ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}: see {self.directory}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not answer within 10 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="paddock-redis-") as directory:
        server = RedisServer(Path(directory), free_port()).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers of a test's own (in its tmp_path); all stopped after the test."""
    started: list[RedisServer] = []

    def start(persistent: bool = False, password: str | None = None) -> RedisServer:
        directory = tmp_path / f"redis{len(started)}"
        directory.mkdir()
        server = RedisServer(directory, free_port(), persistent, password)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f"sqlite://{tmp_path / 'state.sqlite3'}"
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return f"{server.url}?paddock_prefix=t{next(_prefixes)}:"  # an isolated keyspace per test
    raise AssertionError(request.param)


@pytest.fixture
async def store(store_url: str, tmp_path: Path):
    opened = open_store(store_url, tmp_path)
    yield opened
    await opened.close()
