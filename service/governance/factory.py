"""Putting governance together from process settings (the ingress, the benchmarks and the tests call this)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from service.config.schema import ServiceConfig
from service.config.settings import Settings
from service.governance.audit import AuditLog, Rotation, read_key_file
from service.governance.governor import GovernanceOptions, Governor
from service.governance.records import AuditTrail
from service.governance.reload import PolicyHolder
from service.governance.store import RedisAuth, open_store
from service.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)

STARTER_POLICY = """\
# Paddock governance file: tenants, their API keys (hashes only) and limits.
# Add a key with:  paddock keys create --tenant local --append {path}
# Paddock reloads this file within a second of a change.
version: 1
tenants:
  - id: local
    models: ["*"]
    keys: []
"""


def _read_secret(path: Path | None) -> bytes | None:
    return path.read_bytes().strip() if path else None


def ensure_local_files(settings: Settings) -> tuple[Path, Path]:
    """The governance file and admin token file, created (0600) for local use if missing."""
    state = settings.resolved_state_dir()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    policy = settings.resolved_governance_file()
    if settings.governance_file is None and not policy.exists():
        _write_private(policy, STARTER_POLICY.format(path=policy))
        log.info("created a starter governance file at %s", policy)
    token = settings.resolved_admin_token_file()
    if settings.admin_token is None and settings.admin_token_file is None and not token.exists():
        _write_private(token, secrets.token_urlsafe(32) + "\n")
    return policy, token


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def admin_token(settings: Settings) -> str:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.resolved_admin_token_file()
    try:
        return path.read_text().strip()
    except OSError:
        log.error("no admin token (%s unreadable): the admin API refuses every call", path)
        return ""


def redis_auth(settings: Settings) -> RedisAuth:
    """The state store's Redis credentials, passed beside its URL (never spliced into it)."""
    password = _read_secret(settings.state_store_password_file)
    return RedisAuth(
        username=settings.state_store_username,
        password=password.decode() if password is not None else None,
        ca_file=settings.state_store_ca_file,
    )


def build_governor(config: ServiceConfig, settings: Settings, metrics: ServiceMetrics, **tuning: Any) -> Governor:
    """The one way a :class:`Governor` is put together: by the ingress, the benchmarks and the tests.

    ``settings`` say where the policy, state store and audit log are; ``tuning`` replaces fields of
    :class:`GovernanceOptions` that no setting names (e.g. a faster kill poll in tests).
    """
    policy_path, _ = ensure_local_files(settings)
    key_secret = _read_secret(settings.key_secret_file)
    holder = PolicyHolder(
        policy_path,
        secret=key_secret,
        on_reload=lambda result, error: metrics.policy_reloads.labels(result).inc(),
    )
    store = open_store(settings.state_store, settings.resolved_state_dir(), redis_auth(settings))
    writer = AuditLog(
        settings.resolved_audit_dir(),
        key=read_key_file(settings.audit_key_file) if settings.audit_key_file else None,
        stdout=sys.stdout if settings.audit_stdout else None,
        writer_id=f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
        rotation=audit_rotation(settings),
    )
    options = GovernanceOptions(
        fail_open=settings.fail_open,
        auth_failures_per_minute=settings.auth_failures_per_minute,
        cache_salt_secret=key_secret or b"paddock-cache-salt",
    )
    options = dataclasses.replace(options, **tuning)
    if settings.fail_open:
        log.warning("governance FAIL-OPEN: if the state store is unreachable, requests pass without limits")
    trail = AuditTrail(writer, metrics, refusal_window_s=settings.audit_refusal_window_s)
    return Governor(config, holder, store, trail, metrics, options)


def audit_rotation(settings: Settings) -> Rotation:
    """The audit log's rotation and retention, from ``PADDOCK_AUDIT_*``."""
    return Rotation(
        max_file_bytes=settings.audit_max_file_bytes,
        interval_s=settings.audit_rotate_interval_s,
        max_total_bytes=settings.audit_max_total_bytes,
        max_files=settings.audit_max_files,
    )
