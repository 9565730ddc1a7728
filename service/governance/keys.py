"""API keys: made random, shown once, stored only as a hash.

A key is ``pk-`` followed by 43 URL-safe characters (256 random bits). The
governance file stores ``sha256:<hex>`` of it, or ``hmac-sha256:<hex>`` with
a server secret so that a leaked file cannot even be brute-forced offline.
Looking a key up hashes it once, finds the entry by its hash, and compares
in constant time: the cost is the same for 10 keys or 100,000.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.governance.policy import GovernanceFile, KeyEntry, Tenant

KEY_PREFIX = "pk-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, secret: bytes | None = None) -> str:
    if secret:
        return "hmac-sha256:" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key_id(tenant: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"{tenant}-{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's entry and its tenant (never the key itself).

    ``usable_until``: the Unix time until which the key may be used, worked out once (``inf`` for an enabled key
    of an enabled tenant without an expiry, ``-inf`` if either is disabled), so that authenticating a request
    compares two floats; the key entry stays the authority on why a key is refused.
    """

    tenant: Tenant
    key: KeyEntry
    usable_until: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.key
        if not key.enabled or not self.tenant.enabled:
            until = -math.inf
        else:
            until = math.inf if key.expires is None else key.expires.timestamp()
        object.__setattr__(self, "usable_until", until)


class KeyIndex:
    """Every key of a governance file, by hash."""

    def __init__(self, policy: GovernanceFile, secret: bytes | None = None) -> None:
        self._secret = secret
        self._by_hash: dict[str, Principal] = {}
        self._by_id: dict[str, Principal] = {}
        for tenant in policy.tenants:
            for key in tenant.keys:
                principal = Principal(tenant, key)
                self._by_hash[key.hash] = principal
                self._by_id[key.id] = principal

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, presented: str) -> Principal | None:
        """The principal of a presented key, or None; disabled/expired keys are the caller's to check."""
        if not presented.startswith(KEY_PREFIX) or len(presented) > 256:
            return None
        digest = hash_key(presented, self._secret)
        principal = self._by_hash.get(digest)
        if principal is None and self._secret:
            # Entries written without the server secret still work (migration path).
            digest = hash_key(presented)
            principal = self._by_hash.get(digest)
        if principal is None or not hmac.compare_digest(principal.key.hash, digest):
            return None
        return principal

    def by_id(self, key_id: str) -> Principal | None:
        return self._by_id.get(key_id)

    def principals(self) -> list[Principal]:
        return list(self._by_id.values())


def bearer(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer …`` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
