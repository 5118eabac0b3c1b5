"""Token buckets and session counts in Redis, shared by every gateway process.

Each decision is one Lua script, so it is atomic however many gateways ask at
once, and reads the time from the Redis server (``TIME``), so the gateways'
clocks do not matter.  Keys are named after :func:`relay.ratelimit.limit_id`,
never the API key::

    {prefix}:bucket:{id}    hash  tokens, s, us    (expires once it would be full again)
    {prefix}:sessions:{id}  zset  member -> expiry (server seconds)

When Redis cannot answer within ``timeout`` seconds, admission follows
``on_redis_error``: ``fail-open`` decides with this process's own in-memory
limits, ``fail-closed`` raises :class:`~relay.ratelimit.LimitsUnavailable`.
Either way the failure is counted (``redis_errors``) and logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions
import trio
from coredis.retry import ConstantRetryPolicy

from relay.config import KeyConfig, RateLimitConfig
from relay.ratelimit import LimitsUnavailable, MemoryRateLimiter, limit_id
from relay.slots import MemorySessionSlots

__all__ = ["RedisHealth", "RedisRateLimiter", "RedisSessionSlots", "open_redis", "redact_url"]

log = logging.getLogger("relay.limits")

# KEYS[1] bucket hash; ARGV rate (tokens/s), burst.  Returns {1|0, tokens left}.
TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
local tokens = burst
local state = redis.call('HMGET', KEYS[1], 'tokens', 's', 'us')
if state[1] and state[2] and state[3] then
  local elapsed = (tonumber(now[1]) - tonumber(state[2]))
    + (tonumber(now[2]) - tonumber(state[3])) / 1000000
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tonumber(state[1]) + elapsed * rate)
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 's', now[1], 'us', now[2])
if rate > 0 then
  -- Once full again the bucket is the same as no bucket: let Redis drop it.
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
else
  redis.call('PERSIST', KEYS[1])
end
return {allowed, tostring(tokens)}
"""

# KEYS[1] sessions zset; ARGV member, limit (0: no check, a refresh), ttl seconds.
# Drops expired members, then adds (or re-adds) this one with a fresh expiry.
# A refresh re-adds unconditionally: a session still relaying counts even if
# Redis lost its entry (restart, outage longer than the ttl).
CLAIM_SLOT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], t + ttl, ARGV[1])
-- The set outlives its longest claim; never shorten another gateway's.
local ms = math.ceil(ttl * 1000) + 1000
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
"""

_LOG_EVERY = 10.0  # seconds between repeated warnings while Redis keeps failing


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, trio.TooSlowError | TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


class RedisHealth:
    """Failed Redis calls: a counter (for metrics) and throttled log lines."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.errors = 0
        self.failing = False
        self._config = config
        self._logged_at = -math.inf

    def failed(self, what: str, exc: BaseException) -> None:
        """Count one failed call; log it unless a warning went out in the last seconds."""
        self.errors += 1
        now = trio.current_time()
        if not self.failing or now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            policy = (
                "refusing new sessions"
                if self._config.on_redis_error == "fail-closed"
                else "admitting by this process's own limits"
            )
            log.warning(
                "redis %s failed: %s; %s (%s; %d redis errors so far)",
                what,
                _describe(exc, self._config.timeout),
                policy,
                self._config.on_redis_error,
                self.errors,
            )
        self.failing = True

    def succeeded(self) -> None:
        """Note a call that worked; log the recovery after failures."""
        if self.failing:
            self.failing = False
            log.warning("redis reachable again (%d redis errors so far)", self.errors)


class _RedisCalls:
    """What both Redis backends share: the client, key names, bounded calls."""

    def __init__(
        self, client: coredis.Redis[bytes], config: RateLimitConfig, health: RedisHealth
    ) -> None:
        self.client = client
        self.config = config
        self.health = health

    @property
    def redis_errors(self) -> int:
        """Redis calls that failed since start-up (rate limits and session slots)."""
        return self.health.errors

    @property
    def fail_closed(self) -> bool:
        return self.config.on_redis_error == "fail-closed"

    def name(self, kind: str, key_id: str) -> str:
        return f"{self.config.prefix}:{kind}:{key_id}"

    async def call(self, what: str, request: Any) -> Any:
        """Await one coredis request within ``timeout``; failures raise ``_Failed``."""
        try:
            with trio.fail_after(self.config.timeout):
                result = await request
        except Exception as exc:  # any failure means "Redis did not answer"
            self.health.failed(what, exc)
            raise _Failed(what) from exc
        self.health.succeeded()
        return result


class _Failed(Exception):
    """A Redis call that did not answer (already counted and logged)."""


class RedisRateLimiter(_RedisCalls):
    """Token buckets in Redis: one ``TAKE_TOKEN`` script call per connect."""

    def __init__(
        self, client: coredis.Redis[bytes], config: RateLimitConfig, health: RedisHealth
    ) -> None:
        super().__init__(client, config, health)
        self._script = client.register_script(TAKE_TOKEN)
        self._fallback = MemoryRateLimiter()

    async def acquire(self, key: KeyConfig) -> bool:
        """Take one token from ``key``'s shared bucket; False when it is empty."""
        bucket = self.name("bucket", limit_id(key))
        try:
            answer = await self.call(
                "rate limit", self._script(keys=[bucket], args=[repr(key.rate), key.burst])
            )
        except _Failed:
            if self.fail_closed:
                raise LimitsUnavailable("rate limiter unavailable") from None
            return await self._fallback.acquire(key)
        return int(answer[0]) == 1


class RedisSessionSlots(_RedisCalls):
    """Per-key session counts in Redis sorted sets whose members expire.

    Members are ``host:pid:session``, so ``ZRANGE`` shows which gateway holds
    what.  Claims made by the fail-open fallback live in memory and are
    refreshed and released there.
    """

    def __init__(
        self, client: coredis.Redis[bytes], config: RateLimitConfig, health: RedisHealth
    ) -> None:
        super().__init__(client, config, health)
        self._script = client.register_script(CLAIM_SLOT)
        self._fallback = MemorySessionSlots()
        self._local: set[tuple[str, str]] = set()
        self._gateway = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def heartbeat(self) -> float:
        """Seconds between refreshes (``[ratelimit] session_heartbeat``)."""
        return self.config.heartbeat

    def member(self, session_id: str) -> str:
        """The sorted-set member naming ``session_id`` of this gateway."""
        return f"{self._gateway}:{session_id}"

    async def _run(self, what: str, key_id: str, session_id: str, limit: int) -> bool:
        args: list[str | int] = [self.member(session_id), limit, repr(self.config.session_ttl)]
        keys = [self.name("sessions", key_id)]
        return int(await self.call(what, self._script(keys=keys, args=args))) == 1

    async def claim(self, key_id: str, limit: int, session_id: str) -> bool:
        """Count ``session_id`` unless ``limit`` unexpired sessions hold ``key_id``."""
        try:
            return await self._run("session claim", key_id, session_id, limit)
        except _Failed:
            if self.fail_closed:
                raise LimitsUnavailable("session limiter unavailable") from None
        if not await self._fallback.claim(key_id, limit, session_id):
            return False
        self._local.add((key_id, session_id))
        return True

    async def refresh(self, key_id: str, session_id: str) -> None:
        """Push the claim's expiry ``session_ttl`` into the future."""
        if (key_id, session_id) in self._local:
            return
        # A failure is counted and logged; the claim expires if Redis stays away.
        with contextlib.suppress(_Failed):
            await self._run("session refresh", key_id, session_id, 0)

    async def release(self, key_id: str, session_id: str) -> None:
        """Remove the claim (if that fails, it expires after ``session_ttl``)."""
        if (key_id, session_id) in self._local:
            self._local.discard((key_id, session_id))
            await self._fallback.release(key_id, session_id)
            return
        name = self.name("sessions", key_id)
        with contextlib.suppress(_Failed):
            await self.call("session release", self.client.zrem(name, [self.member(session_id)]))


@asynccontextmanager
async def open_redis(
    config: RateLimitConfig,
) -> AsyncIterator[tuple[RedisRateLimiter, RedisSessionSlots]]:
    """Connect to ``config.url`` and yield the two Redis backends.

    Raises :class:`LimitsUnavailable` at once if Redis does not answer a PING,
    so a gateway never starts with limits it cannot keep.
    """
    assert config.url is not None
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        config.url,
        connect_timeout=config.timeout,
        stream_timeout=config.timeout,
        client_name="relay-gateway",
        # One immediate retry on a fresh connection covers a pooled connection
        # that Redis closed (restart, idle timeout); anything longer is an
        # outage, and on_redis_error decides, within ``timeout``.
        retry_policy=ConstantRetryPolicy((coredis.exceptions.ConnectionError,), retries=1, delay=0),
    )
    try:
        async with client:
            try:
                with trio.fail_after(config.timeout):
                    await client.ping()
            except Exception as exc:
                where = redact_url(config.url)
                raise LimitsUnavailable(
                    f"cannot reach Redis at {where}: {_describe(exc, config.timeout)}"
                ) from None
            health = RedisHealth(config)
            yield (
                RedisRateLimiter(client, config, health),
                RedisSessionSlots(client, config, health),
            )
    except BaseExceptionGroup as group:
        # coredis's task group wraps whatever crossed it; the gateway's callers
        # see exactly what they would see with the memory backend.
        if len(group.exceptions) == 1:
            inner = group.exceptions[0]
            raise inner from inner.__cause__
        raise
