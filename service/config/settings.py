"""Process settings: how this process runs, from ``PADDOCK_*`` environment variables.

What the service serves lives in the YAML service config (``schema.py``); these
settings say where to find it and how to run the local process around it.
Settings are built explicitly by the CLI or the app builder and passed down:
nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(value: object) -> object:
    """``10.0.0.0/8``, ``10.1.2.3`` (one host) or ``10.1.2.3/8`` (host bits allowed) as a network."""
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not an IP network: {value[:64]!r}") from None
    return value


Network = Annotated[IPNetwork, BeforeValidator(_network)]


def default_cache_dir() -> Path:
    """The git-ignored cache for prepared models, next to the working directory."""
    return Path.cwd() / ".cache" / "paddock"


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """What every HTTP server of a process (API, admin, metrics, replica ports) allows one client.

    Enforced below the application by ``service.serve.door``; a client past one of them is answered
    in OpenAI's error shape (431, 408, 503) and its connection closed.
    """

    max_connections: int = 1024  # open connections per port; the next one is answered 503 and closed
    max_header_bytes: int = 32 * 1024  # request line and headers, together (431 beyond)
    max_headers: int = 100  # header fields (431 beyond)
    header_timeout_s: float = 10.0  # from the connection (or the request's first byte) to its last header (408)
    body_timeout_s: float = 60.0  # from the last header to the body's last byte (408)
    linger_s: float = 2.0  # after a refusal, how long a still-sending client is read (and ignored) before closing


DEFAULT_DOOR = DoorLimits()


class Settings(BaseSettings):
    """Settings of one Paddock process (CLI, ingress or replica)."""

    model_config = SettingsConfigDict(env_prefix="PADDOCK_", extra="forbid", frozen=True)

    config: Path | None = Field(default=None, description="Service config YAML; none = embedded default.")
    # Overrides of the service config, applied by config.loader.apply_settings at every entry point
    # (paddock serve/prepare, serve deploy and the chart's RayService through the app builder).
    host: str | None = Field(default=None, description="Overrides ingress.host of the config.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Overrides ingress.port.")
    admin_port: int | None = Field(default=None, ge=1, le=65535, description="Overrides admin.port.")
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="Overrides metrics.port.")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; none = local Ray.")
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="Logical CPUs for local Ray (default: enough for the config)."
    )
    ray_dashboard: bool = Field(default=False, description="Start the Ray dashboard (on 127.0.0.1).")
    ray_metrics_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Local Ray's metrics agent port (Ray, Serve and vLLM metrics); 0 = any.",
    )
    ray_node_ip: str | None = Field(
        default=None, description="Local Ray's node address; none = 127.0.0.1 (nothing of Ray beyond this host)."
    )
    ray_temp_dir: Path | None = Field(default=None, description="Local Ray's session directory root.")
    tracing: bool = Field(
        default=False, description="OpenTelemetry traces over OTLP (configured by the standard OTEL_* variables)."
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["json", "text"] = Field(default="json", description="Paddock's own log lines.")
    replica_host: str | None = Field(
        default=None,
        description="Address model replicas bind and announce; none = this node's Ray IP.",
    )
    internal_token: str | None = Field(
        default=None, description="Shared ingress-to-replica token; none = random per deployment."
    )

    # -- governance (see service/governance) --------------------------------
    governance: Literal["on", "off"] = Field(
        default="on", description="off = no keys, limits or audit: local development only."
    )
    governance_file: Path | None = Field(
        default=None, description="Tenants and keys (YAML); none = <state_dir>/governance.yaml, created if missing."
    )
    state_dir: Path | None = Field(default=None, description="Local governance state; none = <cache_dir>/state.")
    state_store: str = Field(
        default="local",
        description="local (node-local SQLite), or redis://host:port/db (rediss:// for TLS). The password belongs "
        "in state_store_password_file: in the URL it would have to be percent-encoded.",
    )
    state_store_username: str | None = Field(
        default=None, min_length=1, description="Redis ACL user (none: the default user)."
    )
    state_store_password_file: Path | None = Field(
        default=None, description="Redis password, from a mounted Secret (sent as is: any character)."
    )
    state_store_ca_file: Path | None = Field(
        default=None, description="CA bundle that verifies a rediss:// state store's certificate."
    )
    fail_open: bool = Field(default=False, description="Admit without limits when the state store is unreachable.")
    key_secret_file: Path | None = Field(default=None, description="Server secret for HMAC-SHA-256 key hashes.")
    audit_dir: Path | None = Field(default=None, description="Audit log directory; none = <state_dir>/audit.")
    audit_key_file: Path | None = Field(default=None, description="HMAC key chaining the audit log.")
    audit_stdout: bool = Field(default=True, description="Also write audit records to stdout for log shipping.")
    audit_max_file_bytes: int = Field(
        default=64 << 20, ge=0, description="Rotate an audit segment once it holds this many bytes; 0 = never."
    )
    audit_rotate_interval_s: float = Field(
        default=86400.0, ge=0, description="Also rotate at each multiple of this since the epoch (UTC); 0 = never."
    )
    audit_max_total_bytes: int = Field(
        default=1 << 30, ge=0, description="Retention: prune the oldest audit segments beyond this total; 0 = none."
    )
    audit_max_files: int = Field(default=0, ge=0, description="Retention: at most this many audit segments; 0 = any.")
    audit_refusal_window_s: float = Field(
        default=10.0, ge=0, description="Identical refusals within this window are one audit record with a count."
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Admin API token (the server's, and the one `paddock admin` sends)."
    )
    admin_token_file: Path | None = Field(
        default=None, description="Admin API token file; none = <state_dir>/admin-token, created if missing."
    )
    admin_url: str = Field(
        default="http://127.0.0.1:8001", description="Admin API base URL `paddock admin` calls (--url overrides)."
    )
    trusted_proxies: tuple[Network, ...] = Field(
        default=(),
        description='Networks whose X-Forwarded-For is believed (a JSON list in the env, e.g. ["10.0.0.0/8"]); '
        "none = the peer address is the client. The server library's own forwarded-header trust is always off.",
    )
    auth_failures_per_minute: int = Field(default=20, ge=1)

    # -- the front door: every HTTP server of this process (service.serve.door) --------------
    max_connections: int = Field(
        default=DEFAULT_DOOR.max_connections, ge=1, description="Open connections per port (503 and close beyond)."
    )
    max_header_bytes: int = Field(
        default=DEFAULT_DOOR.max_header_bytes, ge=1024, description="Request line and headers together (431 beyond)."
    )
    max_headers: int = Field(default=DEFAULT_DOOR.max_headers, ge=8, description="Header fields (431 beyond).")
    header_timeout_s: float = Field(
        default=DEFAULT_DOOR.header_timeout_s, gt=0, description="Time to send a request's headers (408 after)."
    )
    body_timeout_s: float = Field(
        default=DEFAULT_DOOR.body_timeout_s, gt=0, description="Time to send a request's body (408 after)."
    )

    @model_validator(mode="after")
    def _redis_options_need_redis(self) -> Settings:
        redis = self.state_store.startswith(("redis://", "rediss://", "unix://"))
        given = [
            name
            for name in ("state_store_username", "state_store_password_file", "state_store_ca_file")
            if getattr(self, name) is not None
        ]
        if given and not redis:
            raise ValueError(f"PADDOCK_{given[0].upper()} needs a Redis state store, not {self.state_store!r}")
        if self.state_store_ca_file is not None and not self.state_store.startswith("rediss://"):
            raise ValueError("PADDOCK_STATE_STORE_CA_FILE verifies TLS: the state store must be a rediss:// URL")
        return self

    @model_validator(mode="after")
    def _audit_retention_holds_a_segment(self) -> Settings:
        if self.audit_max_file_bytes and 0 < self.audit_max_total_bytes < 2 * self.audit_max_file_bytes:
            raise ValueError(
                "PADDOCK_AUDIT_MAX_TOTAL_BYTES must be at least twice PADDOCK_AUDIT_MAX_FILE_BYTES (0: no limit): "
                "retention keeps the open segment and at least one closed one"
            )
        return self

    def door_limits(self) -> DoorLimits:
        return DoorLimits(
            max_connections=self.max_connections,
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
        )

    def resolved_state_dir(self) -> Path:
        return (self.state_dir or self.cache_dir / "state").resolve()

    def resolved_governance_file(self) -> Path:
        return (self.governance_file or self.resolved_state_dir() / "governance.yaml").resolve()

    def resolved_audit_dir(self) -> Path:
        return (self.audit_dir or self.resolved_state_dir() / "audit").resolve()

    def resolved_admin_token_file(self) -> Path:
        return (self.admin_token_file or self.resolved_state_dir() / "admin-token").resolve()
