"""Process settings: how this process runs, from ``PADDOCK_*`` environment variables.

What the service serves lives in the YAML service config (``schema.py``); these
settings say where to find it and how to run the local process around it.
Settings are built explicitly by the CLI or the app builder and passed down:
nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    """The git-ignored cache for prepared models, next to the working directory."""
    return Path.cwd() / ".cache" / "paddock"


class Settings(BaseSettings):
    """Settings of one Paddock process (CLI, ingress or replica)."""

    model_config = SettingsConfigDict(env_prefix="PADDOCK_", extra="forbid", frozen=True)

    config: Path | None = Field(default=None, description="Service config YAML; none = embedded default.")
    host: str | None = Field(default=None, description="Overrides ingress.host of the config.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Overrides ingress.port.")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; none = local Ray.")
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="Logical CPUs for local Ray (default: enough for the config)."
    )
    ray_dashboard: bool = Field(default=False, description="Start the Ray dashboard (on 127.0.0.1).")
    ray_temp_dir: Path | None = Field(default=None, description="Local Ray's session directory root.")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    replica_host: str | None = Field(
        default=None,
        description="Address model replicas bind and announce; none = this node's Ray IP.",
    )
    internal_token: str | None = Field(
        default=None, description="Shared ingress-to-replica token; none = random per deployment."
    )
