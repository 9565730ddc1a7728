"""A governed Paddock on loopback for the front-door tests, and a raw HTTP/1.1 client to attack it with.

Every server is the production runner (``service.serve.http.start``, uvicorn + httptools behind
``service.serve.door``): the ingress with a real Governor (node-local store, audit log), its admin API, and
a model replica's own server (``ReplicaApp``) around the fake engine, which stands in for vLLM: the claims
tested here are about the front door, not the engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.standins import OneReplicaDirectory
from service.api.admin import AdminApp
from service.api.ingress import IngressApp
from service.api.replica import ReplicaApp
from service.api.upstream import INTERNAL_TOKEN_HEADER, Endpoint, Upstream
from service.config.loader import parse_config
from service.config.schema import ServiceConfig
from service.config.settings import DoorLimits, Settings
from service.engine.fake import FakeEngine
from service.governance.factory import build_governor
from service.governance.governor import Governor
from service.governance.keys import hash_key, new_key
from service.observability.metrics import ServiceMetrics
from service.serve import http

INTERNAL_TOKEN = "internal-t0ken"
ADMIN_TOKEN = "admin-t0ken"
CONFIG = parse_config(
    {
        "ingress": {"max_body_bytes": "4MiB"},
        "models": [{"id": "chat", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "max_model_len": 4096}],
    },
    "test",
)
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Stack:
    """The three servers, their ports, and what is needed to look inside."""

    api: int
    admin: int
    replica: int
    key: str
    governor: Governor
    engine: FakeEngine
    state: Path
    servers: list[tuple[Any, Any]] = field(default_factory=list)

    def port(self, name: str) -> int:
        return {"api": self.api, "admin": self.admin, "replica": self.replica}[name]

    def open_connections(self, name: str) -> int:
        """How many connections the server on this port holds open now."""
        server, _ = self.servers[["replica", "api", "admin"].index(name)]
        return len(server.server_state.connections)

    def audit(self) -> list[dict[str, Any]]:
        """Every audit record written so far (the writer appends one line per record, unbuffered)."""
        return [
            json.loads(line)
            for f in sorted((self.state / "audit").glob("*.jsonl"))
            for line in f.read_text().splitlines()
        ]

    def records(self, **match: object) -> list[dict[str, Any]]:
        return [r for r in self.audit() if all(r.get(k) == v for k, v in match.items())]

    async def stop(self) -> None:
        replica, *front = self.servers
        await asyncio.gather(*(http.stop(server, task) for server, task in front))  # the ingress lets its requests end
        await http.stop(*replica)
        await self.governor.stop()


async def start_stack(
    state: Path,
    limits: DoorLimits,
    trusted_proxies: Sequence[str] = (),
    engine: FakeEngine | None = None,
    config: ServiceConfig = CONFIG,
    parameters: dict[str, Any] | None = None,
    refusal_window_s: float = 0.0,
) -> Stack:
    """``refusal_window_s``: 0 (the default here) records every refusal on its own, as these tests attribute each
    one; the service's default aggregates repeats (tests/api/test_audit_flood.py)."""
    key = new_key()
    tenant = {
        "id": "acme",
        "models": ["*"],
        "parameters": parameters or {},
        "keys": [{"id": "k1", "hash": hash_key(key)}],
    }
    policy = {"tenants": [tenant]}
    governance = state / "governance.yaml"
    governance.write_text(yaml.safe_dump(policy))
    settings = Settings(
        state_dir=state,
        governance_file=governance,
        audit_stdout=False,
        admin_token=ADMIN_TOKEN,
        audit_refusal_window_s=refusal_window_s,
    )
    metrics = ServiceMetrics()
    governor = build_governor(config, settings, metrics, kill_poll_s=0.05)
    await governor.start()
    engine = engine or FakeEngine(model_id="chat")
    servers = []

    async def serve(app: Any, lifespan: str = "off") -> int:
        sock = http.bind("127.0.0.1", 0)
        servers.append(await http.start(app, sock, lifespan=lifespan, limits=limits))  # type: ignore[arg-type]
        return int(sock.getsockname()[1])

    replica = await serve(ReplicaApp(engine, INTERNAL_TOKEN, max_ongoing=1000, max_body_bytes=4 << 20))
    directory = OneReplicaDirectory(Endpoint(f"http://127.0.0.1:{replica}", "r"))
    ingress = IngressApp(config, directory, Upstream(INTERNAL_TOKEN), governor, trusted_proxies, metrics)
    api = await serve(ingress, lifespan="on")
    admin = await serve(AdminApp(governor, governor.store, ADMIN_TOKEN))
    return Stack(api, admin, replica, key, governor, engine, state, servers)


def credentials(stack: Stack, name: str) -> dict[str, str]:
    """The headers that get a request past the port's authentication."""
    return {
        "api": {"authorization": f"Bearer {stack.key}"},
        "admin": {"authorization": f"Bearer {ADMIN_TOKEN}"},
        "replica": {INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN},
    }[name]


def request_head(method: str, path: str, headers: dict[str, str] | Sequence[tuple[str, str]] = ()) -> bytes:
    pairs = headers.items() if isinstance(headers, dict) else headers
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in pairs)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after this answer
    elapsed_s: float

    def error(self) -> dict[str, Any]:
        """The OpenAI error in the body (asserting its shape)."""
        assert self.headers["content-type"].startswith("application/json"), self.headers
        error = json.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return error


async def read_answer(reader: asyncio.StreamReader, started: float, timeout_s: float = 10.0) -> Answer:
    """One HTTP/1.1 response (with a content-length), and whether the connection then ended."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        if headers.get("transfer-encoding") == "chunked":
            body = await read_chunked(reader)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        elapsed = time.monotonic() - started
        try:
            async with asyncio.timeout(1.0 if headers.get("connection") == "close" else 0.2):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False
    return Answer(int(status_line.split()[1]), headers, body, closed, elapsed)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # after the last chunk (no trailers)
    return b"".join(chunks)


async def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> Answer:
    """Send ``data`` on a new connection and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(data)
        await writer.drain()
        return await read_answer(reader, started, timeout_s)
    finally:
        writer.close()
