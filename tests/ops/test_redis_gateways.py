"""Two ``relay serve`` processes sharing one key through a real Redis: one burst, one
refill, one session quota, and a killed gateway's sessions stop counting after expiry."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import coredis
import pytest
import trio

from relay.client import RelayError, open_relay
from relay.config import KeyConfig
from relay.ratelimit import limit_id
from tests.ops.redis_server import RedisServer
from tests.support.conditions import eventually
from tests.support.process import RelayProcess, relay_process
from tests.support.target import TargetServer

CONFIG = """
[server]
bind = "127.0.0.1:0"

[targets]
allow_private = true

[ratelimit]
backend = "redis"
url = "{url}"
session_ttl = 2.0           # short, so a dead gateway's sessions expire within the test
session_heartbeat = 0.4

[[keys]]
key = "shared-burst"
rate = 0.001                # one token per 1000 s: no refill unless the test moves time
burst = 4

[[keys]]
key = "fast-refill"
rate = 20.0
burst = 1

[[keys]]
key = "one-session"
rate = 1000.0
burst = 1000
max_sessions = 1
"""


@asynccontextmanager
async def two_gateways(redis: RedisServer, tmp_path: Path) -> AsyncIterator[list[RelayProcess]]:
    """Two gateway processes with the same configuration and the same Redis."""
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(url=redis.url))
    args = ["--config", str(path)]
    async with relay_process(args) as first, relay_process(args) as second:
        assert "limits: shared in Redis (fail-open on Redis errors)" in first.output
        yield [first, second]


async def _refusal(ws_url: str, key: str, url: str) -> RelayError | None:
    """Open and close one session; the refusal if there was one."""
    try:
        async with open_relay(ws_url, api_key=key, url=url) as relayed:
            await relayed.websocket.send_message("ping")
            assert await relayed.websocket.get_message() == "ping"
    except RelayError as error:
        return error
    return None


async def test_the_burst_is_shared_and_refills(
    redis_server: RedisServer, tmp_path: Path, target: TargetServer
) -> None:
    url = f"{target.url}/echo"
    async with two_gateways(redis_server, tmp_path) as gateways:
        a, b = (g.ws_url for g in gateways)
        # 4 tokens for the key, wherever its sessions arrive.
        for ws_url in (a, b, a, b):
            assert await _refusal(ws_url, "shared-burst", url) is None
        for ws_url in (a, b):
            refused = await _refusal(ws_url, "shared-burst", url)
            assert refused is not None
            assert (refused.code, refused.message) == (1008, "Rate limit exceeded")
        # Refill follows Redis's clock: move the bucket's last update 1000 s back
        # and exactly one token (1000 s x 0.001/s) is there, for either gateway.
        client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with client:
            bucket = f"relay:bucket:{limit_id(KeyConfig(key='shared-burst'))}"
            updated = int(await client.hget(bucket, "s") or 0)
            assert updated > 0
            await client.hset(bucket, {"s": str(updated - 1000)})
        assert await _refusal(b, "shared-burst", url) is None
        assert await _refusal(a, "shared-burst", url) is not None
        # And in real time: a token taken on one gateway comes back on the other.
        assert await _refusal(a, "fast-refill", url) is None

        async def refilled() -> bool:
            return await _refusal(b, "fast-refill", url) is None

        await eventually(refilled, "the bucket to refill")


async def test_a_killed_gateway_holds_its_sessions_only_until_they_expire(
    redis_server: RedisServer, tmp_path: Path, target: TargetServer
) -> None:
    url = f"{target.url}/echo"
    sessions = f"relay:sessions:{limit_id(KeyConfig(key='one-session'))}"
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
    async with two_gateways(redis_server, tmp_path) as (first, second), client:
        async with open_relay(first.ws_url, api_key="one-session", url=url) as held:
            ((member, expiry),) = await client.zrange(sessions, 0, -1, withscores=True)
            assert member.decode().split(":")[-2] == str(first.pid)  # host:pid:session

            async def refreshed() -> bool:
                return (await client.zscore(sessions, member) or 0) > expiry

            # The first gateway keeps its session's claim alive while it relays ...
            await eventually(refreshed, "the heartbeat to push the claim's expiry")
            refused = await _refusal(second.ws_url, "one-session", url)
            assert refused is not None
            assert (refused.code, refused.message) == (
                1008,
                "Too many concurrent sessions for this API key",
            )
            await held.websocket.send_message("still relaying")
            assert await held.websocket.get_message() == "still relaying"
            # ... and once it is killed (no release, no goodbye), the claim expires.
            first.process.send_signal(signal.SIGKILL)
            with trio.fail_after(30):
                await first.process.wait()

            async def admitted() -> bool:
                refusal = await _refusal(second.ws_url, "one-session", url)
                if refusal is not None and refusal.code != 1008:
                    pytest.fail(f"unexpected refusal: {refusal}")
                return refusal is None

            await eventually(admitted, "the killed gateway's claim to expire")

        async def nothing_left() -> bool:
            return await client.zcard(sessions) == 0

        await eventually(nothing_left, "no claim left behind in Redis")
