"""The Redis backends in-process, against a real ``redis-server``: the Lua scripts'
arithmetic, expiry, and what happens when Redis goes away and comes back."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import pytest
import trio

from relay.config import KeyConfig, RateLimitConfig
from relay.ratelimit import LimitsUnavailable, limit_id
from relay.redis_limits import RedisRateLimiter, RedisSessionSlots, open_redis, redact_url
from tests.ops.redis_server import RedisServer
from tests.support.conditions import eventually

SLOW = KeyConfig(key="slow", rate=0.001, burst=3)  # one token per 1000 s: no refill in a test


def _config(server: RedisServer, **overrides: object) -> RateLimitConfig:
    return RateLimitConfig(backend="redis", url=server.url, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def _redis(url: str) -> AsyncIterator[coredis.Redis[bytes]]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with client:
        yield client


async def test_the_bucket_is_taken_atomically_and_refills_by_redis_time(
    redis_server: RedisServer,
) -> None:
    async with (
        open_redis(_config(redis_server)) as (limiter, _slots),
        _redis(redis_server.url) as redis,
    ):
        results: list[bool] = []

        async def take() -> None:
            results.append(await limiter.acquire(SLOW))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(take)
        assert sorted(results) == [False] * 17 + [True] * 3

        bucket = f"relay:bucket:{limit_id(SLOW)}"
        assert SLOW.key is not None
        assert all(SLOW.key.encode() not in name for name in await redis.keys("*"))

        async def rewind(seconds: int) -> None:
            """Move the bucket's last update back, as if ``seconds`` had passed."""
            updated = int(await redis.hget(bucket, "s") or 0)
            await redis.hset(bucket, {"s": str(updated - seconds)})

        await rewind(1000)  # 1000 s x 0.001 tokens/s: exactly one token
        assert await limiter.acquire(SLOW)
        assert not await limiter.acquire(SLOW)
        await rewind(10**6)  # far more than a burst: capped at the burst
        assert [await limiter.acquire(SLOW) for _ in range(4)] == [True, True, True, False]
        assert limiter.redis_errors == 0
        # A bucket that refills expires once it would be full again; none is left behind.
        assert 0 < await redis.pttl(bucket) <= (3 / 0.001 + 1) * 1000


async def test_session_slots_count_release_and_expire(redis_server: RedisServer) -> None:
    long = _config(redis_server, session_ttl=600.0)
    short = _config(redis_server, session_ttl=1.0, session_heartbeat=0.2)
    async with open_redis(long) as (_limiter, slots), open_redis(short) as (_l, short_slots):
        assert slots.heartbeat == 200.0
        assert await slots.claim("k", 2, "a")
        assert await slots.claim("k", 2, "a")  # the same session again: still one
        assert await slots.claim("k", 2, "b")
        assert not await slots.claim("k", 2, "c")
        await slots.release("k", "a")  # released at once, long before its expiry
        assert await slots.claim("k", 2, "c")
        # A claim nobody refreshes expires; another gateway's claim then fits.
        assert await short_slots.claim("e", 1, "dead")

        async def fits() -> bool:
            return await slots.claim("e", 1, "alive")

        await eventually(fits, "the unrefreshed claim to expire")
        assert not await short_slots.claim("e", 1, "dead")
        # A refreshed claim does not expire (its expiry moves on; polled, not timed).
        async with _redis(redis_server.url) as redis:
            name, member = "relay:sessions:r", short_slots.member("kept")
            assert await short_slots.claim("r", 1, "kept")
            first = await redis.zscore(name, member)
            assert first is not None

            async def moved() -> bool:
                await short_slots.refresh("r", "kept")
                return (await redis.zscore(name, member) or 0) > first

            await eventually(moved, "a refresh to push the expiry forward")


async def test_fail_open_falls_back_to_this_process_limits_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = KeyConfig(key="k", rate=0.001, burst=2)
    caplog.set_level(logging.WARNING, "relay.limits")
    async with open_redis(_config(redis_server, timeout=2.0)) as (limiter, slots):
        assert isinstance(limiter, RedisRateLimiter)
        assert isinstance(slots, RedisSessionSlots)
        redis_server.stop()
        # Redis is gone: this process's own buckets decide (burst 2), nothing hangs.
        assert [await limiter.acquire(key) for _ in range(3)] == [True, True, False]
        assert await slots.claim("k", 1, "a")
        assert not await slots.claim("k", 1, "b")
        await slots.refresh("k", "a")
        await slots.release("k", "a")  # a fallback claim is released where it lives
        assert await slots.claim("k", 1, "b")
        assert limiter.redis_errors == slots.redis_errors >= 5
        warnings = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(warnings) == 1  # one line per outage, not one per connect
        assert "admitting by this process's own limits (fail-open" in warnings[0]
        redis_server.start()  # same port, empty: a full bucket again
        assert await limiter.acquire(key)
        assert any("redis reachable again" in r.getMessage() for r in caplog.records)


async def test_fail_closed_refuses_while_redis_is_away(redis_server: RedisServer) -> None:
    config = _config(redis_server, on_redis_error="fail-closed", timeout=2.0)
    async with open_redis(config) as (limiter, slots):
        assert await slots.claim("k", 1, "held")
        redis_server.stop()
        with pytest.raises(LimitsUnavailable):
            await limiter.acquire(KeyConfig(key="k"))
        with pytest.raises(LimitsUnavailable):
            await slots.claim("k", 1, "new")
        # Refresh and release never raise: a live session is not ended for it.
        await slots.refresh("k", "held")
        await slots.release("k", "held")
        assert limiter.redis_errors == 4


async def test_unreachable_redis_at_start_up_is_an_error_naming_it(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    redis_server.stop()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    assert redact_url(url) == f"redis://:***@127.0.0.1:{port}/0"
    with pytest.raises(LimitsUnavailable) as error:
        async with open_redis(RateLimitConfig(backend="redis", url=url)):
            pass
    assert str(error.value).startswith(f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert "hunter2" not in str(error.value)


async def test_relay_serve_exits_1_with_one_line_when_redis_is_unreachable(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    redis_server.stop()
    config = redis_server.directory / "relay.toml"
    config.write_text(
        f'[ratelimit]\nbackend = "redis"\nurl = "redis://:hunter2@127.0.0.1:{port}/0"\n'
    )
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "serve",
            "--config",
            str(config),
            "--bind",
            "127.0.0.1:0",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    (line,) = result.stderr.decode().splitlines()  # one line, nothing else
    assert line.startswith(f"relay: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert b"listening" not in result.stdout


async def test_a_redis_that_stops_answering_is_an_error_not_a_hang(
    redis_server: RedisServer,
) -> None:
    async with open_redis(_config(redis_server, timeout=0.5)) as (limiter, _slots):
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            assert await limiter.acquire(SLOW)  # after `timeout`: this process's own bucket
            assert limiter.redis_errors == 1
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
