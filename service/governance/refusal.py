"""Why governance refuses a request: plain data, mapped to HTTP in ``service.api.errors``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Reason = Literal[
    "missing_api_key",
    "invalid_api_key",
    "auth_throttled",
    "tenant_disabled",
    "model_not_found",
    "killed",
    "invalid_parameter",
    "unknown_parameter",
    "rate_limited",
    "insufficient_quota",
    "store_unavailable",
]


@dataclass
class Refusal(Exception):
    """A governance decision to refuse; ``reason`` is also the audit and metric label."""

    reason: Reason
    message: str
    param: str | None = None
    retry_after_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    detail: str | None = None  # for the audit record only (e.g. which limit), never sent to the client

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
