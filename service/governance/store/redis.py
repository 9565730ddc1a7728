"""The shared state store for many nodes: Redis, one Lua script per atomic step.

Every admission, settlement, renewal (with its sweep), ``hit``, kill and revival
is one Lua script, so it is atomic and uses Redis's clock (``TIME``), never a
client's. The semantics are ``local.py``'s; the keys (all under ``prefix``,
``paddock:`` by default, or ``?paddock_prefix=…`` in the URL) are:

* ``scope:<scope>`` hash: ``rpm``/``rpm_at``, ``tpm``/``tpm_at`` (bucket level and
  when it was last set; absent = full), ``day``/``day_used``/``day_held`` and
  ``month``/``month_used``/``month_held`` (UTC ``YYYY-MM-DD`` / ``YYYY-MM``; the
  counters restart when the period changes);
* ``lease:<id>`` hash (``tokens``, ``slots``, ``conc``, ``day_scope``, ``day``,
  ``month_scope``, ``month``), ``leases`` sorted set (id by expiry, for the sweep)
  and ``conc:<scope>`` sorted set (member by expiry: the live slots of a scope; a
  lease of ``slots`` n holds the members ``<id>``, ``<id>#1`` … ``<id>#<n-1>``);
* ``hit:<name>`` hash (``rpm``/``rpm_at``), expiring once it would be full again;
* ``kills`` hash (scope -> JSON ``{reason, actor, at}``), ``kills:version``
  counter, and the ``kills`` pub/sub channel carrying each new version;
* ``usage:<day>`` hash, field ``<JSON [tenant, key, model]>|<counter>`` with
  counters ``requests``, ``prompt``, ``completion``; ``usage:days`` set of days;
* ``key_use`` hash: key id -> unix time of its last settled request.

The scripts build key names from the prefix, so the store needs one Redis (a
primary, possibly with replicas/Sentinel), not a Redis Cluster. Kills survive a
Redis restart only if that Redis persists (AOF or RDB).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from service.governance.store.base import (
    Admission,
    BucketStates,
    KillState,
    LimitKind,
    RedisAuth,
    Reservation,
    StoreUnavailable,
    Usage,
    UsageRow,
)
from service.governance.store.local import bucket_state

_KINDS: dict[str, str] = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "max_concurrent_requests": "conc",
    "tokens_per_day": "day",
    "tokens_per_month": "month",
}
_NAMES: dict[str, LimitKind] = {code: kind for kind, code in _KINDS.items()}  # type: ignore[misc]
_ERRORS = (RedisError, OSError)  # OSError covers TimeoutError and asyncio.TimeoutError
_SWEEP_BATCH = 1000  # lapsed leases released per renewal (the rest go with the next one)

# Shared by every script: ARGV[1] is the key prefix. Numbers are written with
# %.17g (Redis would otherwise round them to 14 digits).
_PRELUDE = """
local P = ARGV[1]
local function num(x) return string.format('%.17g', x) end
local function clock()  -- now, UTC day, UTC month (days-from-civil, inverted)
  local t = redis.call('TIME')
  local z = math.floor(tonumber(t[1]) / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local month = string.format('%04d-%02d', yoe + era * 400 + (m <= 2 and 1 or 0), m)
  return tonumber(t[1]) + tonumber(t[2]) / 1e6, string.format('%s-%02d', month, d), month
end
local function level(key, f, limit, now)  -- a per-minute bucket's level at now
  local v = redis.call('HMGET', key, f, f .. '_at')
  if not v[1] then return limit end
  return math.min(limit, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * limit / 60)
end
local function spent(key, f, period)  -- a budget's used + held tokens in period
  local v = redis.call('HMGET', key, f, f .. '_used', f .. '_held')
  if v[1] ~= period then return 0 end
  return tonumber(v[2]) + tonumber(v[3])
end
local function add(key, f, period, used, held)
  local v = redis.call('HMGET', key, f, f .. '_used', f .. '_held')
  local u, h = 0, 0
  if v[1] == period then u, h = tonumber(v[2]), tonumber(v[3]) end
  redis.call('HSET', key, f, period, f .. '_used', num(u + used), f .. '_held', num(math.max(0, h + held)))
end
local function release(id, today, month)  -- end a lease, returning its budget holds
  redis.call('ZREM', P .. 'leases', id)
  local lk = P .. 'lease:' .. id
  local v = redis.call('HMGET', lk, 'tokens', 'conc', 'day_scope', 'day', 'month_scope', 'month', 'slots')
  if not v[1] then return end  -- lapsed and swept: already released
  redis.call('DEL', lk)
  if v[2] then
    local ck = P .. 'conc:' .. v[2]
    redis.call('ZREM', ck, id)
    for k = 1, (tonumber(v[7]) or 1) - 1 do redis.call('ZREM', ck, id .. '#' .. k) end
  end
  local tokens = tonumber(v[1])
  if v[3] and v[4] == today then add(P .. 'scope:' .. v[3], 'day', today, 0, -tokens) end
  if v[5] and v[6] == month then add(P .. 'scope:' .. v[5], 'month', month, 0, -tokens) end
end
"""

# ARGV: prefix, lease ttl, tokens, lease id, weight, then (kind, scope, limit) triples.
# -> {admitted, reason, retry_after, rpm limit, rpm level, tpm limit, tpm level, lease id}
_ADMIT = """
local ttl, tokens, lease, weight = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now, today, month = clock()
local rate, budget, conc, hdr = {}, {}, nil, {'', '', '', ''}
local function deny(kind, wait) return {0, kind, num(wait), hdr[1], hdr[2], hdr[3], hdr[4], ''} end
for i = 6, #ARGV, 3 do
  local kind, scope, limit = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local sk = P .. 'scope:' .. scope
  if kind == 'rpm' or kind == 'tpm' then
    local need, h = weight, 1
    if kind == 'tpm' then need, h = tokens, 3 end
    local lv = level(sk, kind, limit, now)
    if need > limit or lv < need then
      hdr[h], hdr[h + 1] = limit, num(lv)
      if need > limit then return deny(kind, 0) end
      return deny(kind, (need - lv) * 60 / limit)
    end
    rate[kind] = {sk, lv - need}
    hdr[h], hdr[h + 1] = limit, num(lv - need)
  elseif kind == 'day' or kind == 'month' then
    if spent(sk, kind, kind == 'day' and today or month) + tokens > limit then return deny(kind, 0) end
    budget[kind] = scope
  else
    conc = {scope, limit}
  end
end
if conc then
  if weight > conc[2] then return deny('conc', 0) end  -- more slots than the limit: never
  local ck = P .. 'conc:' .. conc[1]
  redis.call('ZREMRANGEBYSCORE', ck, '-inf', num(now))  -- lapsed slots (renew re-adds a live lease)
  if redis.call('ZCARD', ck) + weight > conc[2] then return deny('conc', 1) end
end
for kind, r in pairs(rate) do redis.call('HSET', r[1], kind, num(r[2]), kind .. '_at', num(now)) end
if budget.day then add(P .. 'scope:' .. budget.day, 'day', today, 0, tokens) end
if budget.month then add(P .. 'scope:' .. budget.month, 'month', month, 0, tokens) end
if not (conc or budget.day or budget.month) then return {1, '', '0', hdr[1], hdr[2], hdr[3], hdr[4], ''} end
local expires = num(now + ttl)
local fields = {'tokens', tokens, 'day', today, 'month', month, 'slots', weight}
if conc then
  table.insert(fields, 'conc'); table.insert(fields, conc[1])
  local ck = P .. 'conc:' .. conc[1]
  redis.call('ZADD', ck, expires, lease)
  for k = 1, weight - 1 do redis.call('ZADD', ck, expires, lease .. '#' .. k) end
end
if budget.day then table.insert(fields, 'day_scope'); table.insert(fields, budget.day) end
if budget.month then table.insert(fields, 'month_scope'); table.insert(fields, budget.month) end
redis.call('HSET', P .. 'lease:' .. lease, unpack(fields))
redis.call('ZADD', P .. 'leases', expires, lease)
return {1, '', '0', hdr[1], hdr[2], hdr[3], hdr[4], lease}
"""

# ARGV: prefix, lease id or '', tokens, prompt, completion, tenant, key, model, then quota triples.
_SETTLE = """
local now, today, month = clock()
if ARGV[2] ~= '' then release(ARGV[2], today, month) end
local prompt, completion = tonumber(ARGV[4]), tonumber(ARGV[5])
local used = prompt + completion
local refund = math.max(0, tonumber(ARGV[3]) - used)
for i = 9, #ARGV, 3 do
  local kind, sk, limit = ARGV[i], P .. 'scope:' .. ARGV[i + 1], tonumber(ARGV[i + 2])
  if kind == 'tpm' and refund > 0 then
    redis.call('HSET', sk, 'tpm', num(math.min(limit, level(sk, 'tpm', limit, now) + refund)), 'tpm_at', num(now))
  elseif kind == 'day' then
    add(sk, 'day', today, used, 0)
  elseif kind == 'month' then
    add(sk, 'month', month, used, 0)
  end
end
local uk, row = P .. 'usage:' .. today, cjson.encode({ARGV[6], ARGV[7], ARGV[8]})
redis.call('HINCRBY', uk, row .. '|requests', 1)
redis.call('HINCRBY', uk, row .. '|prompt', prompt)
redis.call('HINCRBY', uk, row .. '|completion', completion)
redis.call('SADD', P .. 'usage:days', today)
redis.call('HSET', P .. 'key_use', ARGV[7], num(now))
"""

# ARGV: prefix, lease ttl, sweep batch, lease ids...
_RENEW = """
local now, today, month = clock()
local expires = num(now + tonumber(ARGV[2]))
for i = 4, #ARGV do
  local lk = P .. 'lease:' .. ARGV[i]
  if redis.call('EXISTS', lk) == 1 then
    redis.call('ZADD', P .. 'leases', expires, ARGV[i])
    local c = redis.call('HMGET', lk, 'conc', 'slots')
    if c[1] then
      local ck = P .. 'conc:' .. c[1]
      redis.call('ZADD', ck, expires, ARGV[i])
      for k = 1, (tonumber(c[2]) or 1) - 1 do redis.call('ZADD', ck, expires, ARGV[i] .. '#' .. k) end
    end
  end
end
local lapsed = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', num(now), 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(lapsed) do release(id, today, month) end
"""

# ARGV: prefix, name, per-minute limit -> seconds to wait ('0' = taken)
_HIT = """
local now = clock()
local key, limit = P .. 'hit:' .. ARGV[2], tonumber(ARGV[3])
local lv = level(key, 'rpm', limit, now)
if lv < 1 then return num((1 - lv) * 60 / limit) end
redis.call('HSET', key, 'rpm', num(lv - 1), 'rpm_at', num(now))
redis.call('EXPIRE', key, 61)  -- full again within 60 s: a missing bucket is a full one
return '0'
"""

# ARGV: prefix, scope, reason, actor -> {version, kills hash}
_KILL = """
local now = clock()
redis.call('HSET', P .. 'kills', ARGV[2], cjson.encode({reason = ARGV[3], actor = ARGV[4], at = num(now)}))
local version = redis.call('INCR', P .. 'kills:version')
redis.call('PUBLISH', P .. 'kills', version)
return {version, redis.call('HGETALL', P .. 'kills')}
"""

# ARGV: prefix, scope -> {version, kills hash}
_REVIVE = """
if redis.call('HDEL', P .. 'kills', ARGV[2]) == 1 then
  redis.call('PUBLISH', P .. 'kills', redis.call('INCR', P .. 'kills:version'))
end
return {tonumber(redis.call('GET', P .. 'kills:version') or '0'), redis.call('HGETALL', P .. 'kills')}
"""

_SCRIPTS = {"admit": _ADMIT, "settle": _SETTLE, "renew": _RENEW, "hit": _HIT, "kill": _KILL, "revive": _REVIVE}


def split_url(url: str) -> tuple[str, str | None, str]:
    """``url`` -> (URL for redis-py, ``paddock_prefix`` from its query, URL to show: no password, no query)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for name, value in query if name == "paddock_prefix"), None)
    rest = urlencode([(name, value) for name, value in query if name != "paddock_prefix"])
    client = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return client, prefix, f"{parts.scheme}://{netloc}{parts.path}"


class RedisStore:
    """Redis-backed :class:`~service.governance.store.base.Store` shared by every node."""

    def __init__(
        self,
        url: str,
        prefix: str = "paddock:",
        health_check_interval_s: int = 5,
        auth: RedisAuth | None = None,
    ) -> None:
        client_url, url_prefix, self.url = split_url(url)
        parts = urlsplit(url)
        auth = auth or RedisAuth()
        self._secrets = [secret for secret in (parts.password, auth.password) if secret]
        self.prefix = url_prefix if url_prefix is not None else prefix
        try:
            self._redis = Redis.from_url(
                client_url,
                **_auth_options(parts.scheme, parts.username, parts.password, auth),
                decode_responses=True,
                socket_connect_timeout=1,
                socket_timeout=2,
                health_check_interval=health_check_interval_s,
                # One immediate reconnect for a connection Redis dropped (e.g. it restarted);
                # never a retry after a timeout: the script may have run.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                client_name="paddock",
            )
        except (ValueError, RedisError) as error:
            raise self._unavailable(error) from error
        self._scripts = {name: self._redis.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()}

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        message = str(error) or type(error).__name__
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StoreUnavailable(f"governance state store {self.url}: {message}")

    async def _run(self, script: str, *args: Any) -> Any:
        try:
            return await self._scripts[script](args=[self.prefix, *args])
        except _ERRORS as error:
            raise self._unavailable(error) from error

    # -- admission ---------------------------------------------------------

    async def admit(self, reservation: Reservation, lease_ttl_s: float) -> Admission:
        lease_id = uuid.uuid4().hex
        r = reservation
        got = await self._run("admit", lease_ttl_s, r.tokens, lease_id, r.weight, *_quota_args(r))
        admitted, reason, wait, rpm_limit, rpm_level, tpm_limit, tpm_level, lease = got
        headers: BucketStates = {}
        if rpm_limit != "":
            headers["requests"] = bucket_state(int(rpm_limit), float(rpm_level))
        if tpm_limit != "":
            headers["tokens"] = bucket_state(int(tpm_limit), float(tpm_level))
        if admitted:
            return Admission(True, None, 0.0, lease or None, **headers)
        return Admission(False, _NAMES[reason], float(wait), **headers)

    async def settle(self, reservation: Reservation, lease_id: str | None, usage: Usage) -> None:
        r = reservation
        args = (lease_id or "", r.tokens, usage.prompt_tokens, usage.completion_tokens, r.tenant, r.key_id, r.model)
        await self._run("settle", *args, *_quota_args(r, ("tpm", "day", "month")))

    async def renew(self, lease_ids: list[str], lease_ttl_s: float) -> None:
        await self._run("renew", lease_ttl_s, _SWEEP_BATCH, *lease_ids)

    async def hit(self, name: str, per_minute: int) -> float:
        return float(await self._run("hit", name, per_minute))

    # -- kills -------------------------------------------------------------

    async def kill(self, scope: str, reason: str, actor: str) -> KillState:
        return _kill_state(*await self._run("kill", scope, reason, actor))

    async def revive(self, scope: str, actor: str) -> KillState:
        return _kill_state(*await self._run("revive", scope))

    async def kill_version(self) -> int:
        try:
            return int(await self._redis.get(self.prefix + "kills:version") or 0)
        except _ERRORS as error:
            raise self._unavailable(error) from error

    async def kills(self) -> KillState:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self.prefix + "kills:version")
                pipe.hgetall(self.prefix + "kills")
                version, scopes = await pipe.execute()
        except _ERRORS as error:
            raise self._unavailable(error) from error
        return _kill_state(int(version or 0), [item for pair in scopes.items() for item in pair])

    async def subscribe_kills(self) -> AsyncIterator[int]:
        """The kill version once subscribed, then each new one as it is published.

        Ends with :class:`StoreUnavailable` if Redis goes away: poll ``kill_version``
        and subscribe again. Cancelling or closing the iterator unsubscribes.
        """
        pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.subscribe(self.prefix + "kills")
            while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
                pass
            yield await self.kill_version()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message["type"] == "message":
                    yield int(message["data"])
        except _ERRORS as error:
            raise self._unavailable(error) from error
        finally:
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]  # redis-py's own, untyped

    # -- reports -----------------------------------------------------------

    async def last_used(self) -> dict[str, float]:
        try:
            used = cast(dict[str, str], await self._redis.hgetall(self.prefix + "key_use"))  # decode_responses
        except _ERRORS as error:
            raise self._unavailable(error) from error
        return {key: float(at) for key, at in used.items()}

    async def usage(self, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        try:
            known = cast(set[str], await self._redis.smembers(self.prefix + "usage:days"))  # decode_responses
            days = sorted(d for d in known if (since or "") <= d <= (until or "9999"))
            async with self._redis.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.prefix + "usage:" + day)
                tables = await pipe.execute()
        except _ERRORS as error:
            raise self._unavailable(error) from error
        rows: list[UsageRow] = []
        for day, table in zip(days, tables, strict=True):
            counts: dict[tuple[str, str, str], dict[str, int]] = {}
            for name, value in table.items():
                row, _, counter = name.rpartition("|")
                counts.setdefault(tuple(json.loads(row)), {})[counter] = int(value)
            for (tenant, key, model), c in sorted(counts.items()):
                rows.append(UsageRow(day, tenant, key, model, c["requests"], c["prompt"], c["completion"]))
        return rows

    async def close(self) -> None:
        try:
            await self._redis.aclose(close_connection_pool=True)
        except _ERRORS as error:
            raise self._unavailable(error) from error


def _auth_options(scheme: str, url_user: str | None, url_password: str | None, auth: RedisAuth) -> dict[str, Any]:
    """redis-py's keyword arguments for ``auth`` (a URL's own credentials would silently win over them)."""
    if auth.password is not None and url_password:
        raise ValueError("the Redis password is both in the URL and given separately: keep only the separate one")
    if auth.username is not None and url_user:
        raise ValueError("the Redis username is both in the URL and given separately: keep only the separate one")
    options: dict[str, Any] = {}
    if auth.username is not None:
        options["username"] = auth.username
    if auth.password is not None:
        options["password"] = auth.password
    if auth.ca_file is not None:
        if scheme != "rediss":
            raise ValueError("a CA bundle verifies TLS: use a rediss:// URL")
        options["ssl_ca_certs"] = str(auth.ca_file)
    return options


def _quota_args(reservation: Reservation, kinds: Sequence[str] | None = None) -> list[Any]:
    args: list[Any] = []
    for quota in reservation.quotas:
        code = _KINDS[quota.kind]
        if kinds is None or code in kinds:
            args += (code, quota.scope, quota.limit)
    return args


def _kill_state(version: int, flat: list[str]) -> KillState:
    scopes = {}
    for scope, entry in zip(flat[::2], flat[1::2], strict=True):
        record = json.loads(entry)
        scopes[scope] = {"reason": record["reason"], "actor": record["actor"], "at": float(record["at"])}
    return KillState(int(version), scopes)
