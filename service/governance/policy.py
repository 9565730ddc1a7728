"""The governance file: tenants, their keys, and every limit on their use.

Plain pydantic, no environment reads: ``paddock serve`` loads it at start and
reloads it when it changes (``reload.py``). Unknown keys are rejected. A key
entry holds only the key's hash, never the key (``keys.py`` makes both).

Limits and parameters are set per tenant and may be overridden per key: a
field set on the key replaces the tenant's, and a limit the key sets is
counted for that key alone; a limit it inherits is counted for the whole
tenant (every key of the tenant draws on it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
HASH_PATTERN = r"^(sha256|hmac-sha256):[0-9a-f]{64}$"
ALL_MODELS = "*"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(StrictModel):
    """Counted limits; ``None`` means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    tokens_per_month: int | None = Field(default=None, ge=1)


# OpenAI's reasoning efforts, least to most.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class Parameters(StrictModel):
    """What a request may ask of a model."""

    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Cap on max_tokens / max_completion_tokens / max_output_tokens."
    )
    output_tokens_over_cap: Literal["clamp", "reject"] = "clamp"
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    max_n: int = Field(default=1, ge=1, description="Cap on `n` (and `best_of`).")
    max_batch: int = Field(
        default=32,
        ge=1,
        description="Most prompts one request may hold (a completion's `prompt` list, an embeddings `input` "
        "list). Each prompt counts as one request for requests_per_minute and max_concurrent_requests.",
    )
    system_prompt: str | None = Field(default=None, description="Prepended to every chat and completion prompt.")
    request_timeout_s: float | None = Field(default=None, gt=0)
    allowed_fields: tuple[str, ...] = Field(
        default=(), description="Request fields beyond OpenAI's (vLLM extensions) this tenant may set."
    )
    max_reasoning_effort: ReasoningEffort | None = Field(
        default=None,
        description="Cap on reasoning_effort (chat) and reasoning.effort (Responses); higher asks are lowered "
        "to it, and a request that names none gets min(cap, medium).",
    )
    special_tokens: Literal["escape", "allow"] = Field(
        default="escape",
        description="The model's control tokens typed into chat, Responses or Messages content: `escape` reads "
        "them as text (no forged system or assistant turns), `allow` as control tokens.",
    )
    builtin_tools: tuple[str, ...] = Field(
        default=(),
        description="Responses built-in tool types (web_search_preview, code_interpreter, mcp, ...) this tenant "
        "may send; function tools are always allowed. Chat's web_search_options needs `web_search`.",
    )


class AuditOptions(StrictModel):
    include_text: bool = Field(
        default=False, description="Record prompt and completion text (secrets redacted) in the audit log."
    )


class Overrides(StrictModel):
    """Per-key overrides: only the fields given replace the tenant's."""

    limits: dict[str, int | None] = Field(default_factory=dict)
    parameters: dict[str, object] = Field(default_factory=dict)

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, value: dict[str, int | None]) -> dict[str, int | None]:
        Limits.model_validate(value)  # raises on unknown keys and bad values
        return value

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: dict[str, object]) -> dict[str, object]:
        Parameters.model_validate(value)
        return value


class KeyEntry(StrictModel):
    """One API key, stored as its hash."""

    id: str = Field(pattern=ID_PATTERN, description="Shown in logs, audit and usage; not secret.")
    hash: str = Field(pattern=HASH_PATTERN)
    enabled: bool = True
    expires: datetime | None = None
    created: datetime | None = None
    models: tuple[str, ...] | None = Field(default=None, description="Replaces the tenant's allow-list.")
    limits: dict[str, int | None] = Field(default_factory=dict)
    parameters: dict[str, object] = Field(default_factory=dict)

    @field_validator("expires", "created")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _overrides_valid(self) -> KeyEntry:
        Overrides(limits=self.limits, parameters=self.parameters)
        return self

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


class Tenant(StrictModel):
    id: str = Field(pattern=ID_PATTERN)
    enabled: bool = True
    models: tuple[str, ...] = Field(description=f"Allowed model ids or aliases; {ALL_MODELS!r} allows every model.")
    limits: Limits = Field(default_factory=Limits)
    parameters: Parameters = Field(default_factory=Parameters)
    audit: AuditOptions = Field(default_factory=AuditOptions)
    keys: tuple[KeyEntry, ...] = ()


class GovernanceFile(StrictModel):
    """The whole governance file."""

    version: Literal[1] = 1
    tenants: tuple[Tenant, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> GovernanceFile:
        tenants: set[str] = set()
        keys: dict[str, str] = {}
        hashes: set[str] = set()
        for tenant in self.tenants:
            if tenant.id in tenants:
                raise ValueError(f"tenant id {tenant.id!r} is declared twice")
            tenants.add(tenant.id)
            for key in tenant.keys:
                if key.id in keys:
                    raise ValueError(f"key id {key.id!r} is used by tenants {keys[key.id]!r} and {tenant.id!r}")
                if key.hash in hashes:
                    raise ValueError(f"key {key.id!r}: the same key hash appears twice")
                keys[key.id] = tenant.id
                hashes.add(key.hash)
        return self


def valid_id(value: str) -> bool:
    return re.match(ID_PATTERN, value) is not None
