"""Which replica of a model gets a request: least loaded, or the replica that holds its prompt prefix.

``least_loaded`` is power of two choices on this ingress's own in-flight counts (:func:`pick`).

``prefix`` sends requests that share a prompt prefix to the same replica, so vLLM's automatic
prefix caching (on by default in vLLM 0.32) reuses the KV blocks of that prefix instead of
prefilling it again on every replica:

* **The key** (:func:`prefix_key`) is a 64-bit BLAKE2b hash of the leading text of the request,
  never more than :data:`PREFIX_CHARS` characters of it: the system prompt (``system``,
  ``instructions``) and the messages in order (role and text), without the last message when what
  comes before it is long enough to be worth caching (:data:`MIN_SHARED_CHARS`), so that
  requests differing only in their newest turn share a key; a completions ``prompt`` is its
  first :data:`PREFIX_CHARS` characters. A client's own ``prompt_cache_key`` (OpenAI's field for
  exactly this) is the key when it sends one; the tenant's ``cache_salt`` is always part of it. A request with less text than
  :data:`MIN_SHARED_CHARS` has no prefix worth a replica, and no key: it is routed least loaded.
  No tokenisation, and the work is bounded by :data:`PREFIX_CHARS` whatever the body's size.
* **The replica** is the key's rendezvous (highest random weight) choice over the replica ids:
  each replica scores ``mix(key, hash(replica_id))`` and the highest wins. Every ingress replica
  agrees without sharing any state, and a replica that joins or leaves moves only the keys it
  wins or won (about ``1/n`` of them).
* **Bounded by load**: the replicas are tried in the key's rank order and the first whose
  in-flight count is within :func:`within_bound` of the least-loaded one gets the request. A hot
  prefix spills onto its second-ranked replica (which then caches it too), not onto a random one;
  the least-loaded replica is always within the bound, so the walk always ends.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from service.api.upstream import Endpoint

PREFIX_CHARS = 2048  # at most this many characters are hashed (~500 tokens of English; 4 CPU / 32 GPU KV blocks)
MIN_SHARED_CHARS = 512  # less leading text than this (~128 tokens) is not worth a replica: no key
LOAD_SLACK = 4  # the preferred replica may have this many more requests in flight than the least-loaded one
LOAD_RATIO = 1.25  # … or 25 % more, whichever is larger (bounded-load consistent hashing's usual c)
_MASK = (1 << 64) - 1
_SEP = "\x1e"  # between messages, so that ("ab", "c") and ("a", "bc") differ


def pick(endpoints: Sequence[Endpoint]) -> Endpoint:
    """Power of two choices on this ingress's own in-flight counts."""
    if len(endpoints) == 1:
        return endpoints[0]
    first, second = random.sample(list(endpoints), 2)
    return first if first.inflight <= second.inflight else second


def within_bound(inflight: int, least: int) -> bool:
    """May a replica with ``inflight`` requests take one more, while the least-loaded one has ``least``?"""
    return inflight <= max(least + LOAD_SLACK, least * LOAD_RATIO)


@lru_cache(maxsize=4096)
def _replica_hash(replica_id: str) -> int:
    return int.from_bytes(blake2b(replica_id.encode(), digest_size=8).digest(), "little")


def _mix(value: int) -> int:
    """SplitMix64's finaliser: a 64-bit value to a well-spread 64-bit value."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def rank(key: int, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """``endpoints`` in the key's rendezvous order: the preferred replica first."""
    return sorted(endpoints, key=lambda e: _mix(key ^ _replica_hash(e.replica_id)), reverse=True)


def pick_for_prefix(key: int | None, endpoints: Sequence[Endpoint]) -> Endpoint:
    """The key's highest-ranked replica within the load bound; least loaded when there is no key."""
    if key is None or len(endpoints) == 1:
        return pick(endpoints)
    least = min(e.inflight for e in endpoints)
    best, best_score = None, -1
    for endpoint in endpoints:  # one pass when the preferred replica is within the bound (the usual case)
        score = _mix(key ^ _replica_hash(endpoint.replica_id))
        if score > best_score:
            best, best_score = endpoint, score
    assert best is not None
    if within_bound(best.inflight, least):
        return best
    return next(e for e in rank(key, endpoints) if within_bound(e.inflight, least))


# --------------------------------------------------------------------------- the key


class _Lead:
    """The leading text of a request, gathered up to a limit (pieces are appended, never copied whole)."""

    __slots__ = ("parts", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def add(self, text: str) -> None:
        room = self.limit - self.size
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room]
        self.parts.append(text)
        self.size += len(text)

    def add_content(self, content: Any) -> None:
        """A message's ``content``: a string, or a list of parts whose ``text`` is taken (images are skipped)."""
        if isinstance(content, str):
            self.add(content)
        elif isinstance(content, list):
            for part in content:
                if self.full:
                    return
                if isinstance(part, str):
                    self.add(part)
                elif isinstance(part, dict) and isinstance(text := part.get("text"), str):
                    self.add(text)

    def add_messages(self, messages: Sequence[Any]) -> None:
        for message in messages:
            if self.full:
                return
            if isinstance(message, dict):
                role = message.get("role")
                self.add(role if isinstance(role, str) else "")
                self.add(":")
                self.add_content(message.get("content"))
            else:
                self.add_content(message)
            self.add(_SEP)

    def digest(self, salt: str) -> int:
        text = salt + "\x1f" + "".join(self.parts)
        return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _conversation(salt: str, system: Any, messages: Any) -> int | None:
    """The key of a conversation: its system prompt and messages, without the newest one if the rest is long."""
    if not isinstance(messages, list):
        messages = [messages] if isinstance(messages, str) else []
    lead = _Lead(PREFIX_CHARS)
    if system is not None:
        lead.add("system:")
        lead.add_content(system)
        lead.add(_SEP)
    lead.add_messages(messages[:-1] if len(messages) > 1 else ())
    if lead.size < MIN_SHARED_CHARS and messages:
        lead.add_messages(messages[-1:])  # short history: the newest message is part of what is shared
    return lead.digest(salt) if lead.size >= MIN_SHARED_CHARS else None


def _prompt(salt: str, prompt: Any) -> int | None:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch: the first prompt speaks for it
    if not isinstance(prompt, str) or len(prompt) < MIN_SHARED_CHARS:
        return None  # token ids, or too short to be worth a replica
    lead = _Lead(PREFIX_CHARS)
    lead.add(prompt)
    return lead.digest(salt)


def prefix_key(operation: str, request: Mapping[str, Any]) -> int | None:
    """The routing key of a parsed request body (``None``: no prefix worth routing by; route least loaded).

    The body's ``cache_salt`` (governance sets one per tenant: vLLM then shares cached blocks only between
    requests with the same salt) is part of the key, so tenants who cannot share a cache do not share a key.
    """
    salt = request.get("cache_salt")
    salt = salt if isinstance(salt, str) else ""
    cache_key = request.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key and operation != "embeddings":
        lead = _Lead(PREFIX_CHARS)
        lead.add("key:")
        lead.add(cache_key)
        return lead.digest(salt)
    if operation == "chat":
        return _conversation(salt, None, request.get("messages"))
    if operation == "messages":
        return _conversation(salt, request.get("system"), request.get("messages"))
    if operation == "responses":
        return _conversation(salt, request.get("instructions"), request.get("input"))
    if operation == "completions":
        return _prompt(salt, request.get("prompt"))
    return None  # embeddings: no KV cache to reuse
