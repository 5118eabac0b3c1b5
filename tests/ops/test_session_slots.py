"""Per-key concurrent sessions (``max_sessions``) with the in-memory backend, and how
the session uses its claim: taken after the token, refreshed while relaying, released."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from relay.client import RelayError, open_relay
from relay.config import KeyConfig
from relay.gateway import Gateway
from relay.ratelimit import LimitsUnavailable, limit_id
from relay.server import serve
from relay.slots import MemorySessionSlots, SessionClaim
from tests.support.conditions import eventually
from tests.support.gateway import make_config, start_gateway
from tests.support.target import TargetServer

LIMITED = KeyConfig(key="two-at-a-time", rate=1000.0, burst=1000, max_sessions=2)
FREE = KeyConfig(key="unlimited", rate=1000.0, burst=1000)


async def test_memory_slots_count_each_session_once() -> None:
    slots = MemorySessionSlots()
    assert await slots.claim("k", 2, "a")
    assert await slots.claim("k", 2, "a")  # the same session again: still one
    assert await slots.claim("k", 2, "b")
    assert not await slots.claim("k", 2, "c")
    assert await slots.claim("other", 2, "c")  # keys are counted apart
    await slots.release("k", "a")
    await slots.release("k", "a")  # twice is harmless
    assert slots.count("k") == 1
    assert await slots.claim("k", 2, "c")


async def test_a_key_is_held_to_max_sessions_and_a_closed_session_frees_its_slot(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(keys=(LIMITED, FREE)))
    url = f"{target.url}/echo"
    async with open_relay(running.ws_url, api_key="two-at-a-time", url=url) as first:
        async with open_relay(running.ws_url, api_key="two-at-a-time", url=url):
            with pytest.raises(RelayError) as refused:
                async with open_relay(running.ws_url, api_key="two-at-a-time", url=url):
                    pass
            assert (refused.value.code, refused.value.message) == (
                1008,
                "Too many concurrent sessions for this API key",
            )
            # Another key is not affected, and a key without max_sessions has no limit.
            async with AsyncExitStack() as free:
                for _ in range(3):
                    await free.enter_async_context(
                        open_relay(running.ws_url, api_key="unlimited", url=url)
                    )
        # The second session has ended: its slot comes back once the gateway
        # has finished closing it (polled, not timed).
        await eventually(lambda: _admitted(running.ws_url, url), "a freed slot")
        await first.websocket.send_message("still here")
        assert await first.websocket.get_message() == "still here"
    slots = running.gateway.slots
    assert isinstance(slots, MemorySessionSlots)
    await eventually(_async(lambda: slots.count(limit_id(LIMITED)) == 0), "all slots released")


async def _admitted(ws_url: str, url: str) -> bool:
    """Whether a session for the limited key is admitted (and relays) now."""
    try:
        async with open_relay(ws_url, api_key="two-at-a-time", url=url) as relayed:
            await relayed.websocket.send_message("again")
            return await relayed.websocket.get_message() == "again"
    except RelayError as error:
        if error.code != 1013:
            raise
        return False


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


class CountingSlots(MemorySessionSlots):
    """Memory slots that expire (so they are refreshed) and count the refreshes."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    @property
    def heartbeat(self) -> float | None:
        return 5.0

    async def refresh(self, key_id: str, session_id: str) -> None:
        self.refreshes += 1


async def test_a_claim_is_refreshed_every_heartbeat_until_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = CountingSlots()
    claim = SessionClaim(slots)
    assert await claim.claim(LIMITED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(claim.keep_alive)
        await trio.sleep(21)  # refreshes at 5, 10, 15, 20
        nursery.cancel_scope.cancel()
    assert slots.refreshes == 4
    await claim.release()
    assert slots.count(limit_id(LIMITED)) == 0
    # A key without max_sessions claims nothing and has nothing to refresh.
    unlimited = SessionClaim(slots)
    assert await unlimited.claim(FREE)
    assert unlimited.key_id is None
    await unlimited.keep_alive()  # returns at once


class UnavailableLimiter:
    """A shared backend that fails closed while its store is down."""

    async def acquire(self, key: KeyConfig) -> bool:
        raise LimitsUnavailable("rate limiter unavailable")


async def test_limits_that_fail_closed_refuse_with_1013(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    config = make_config(keys=(FREE,))
    gateway = Gateway.from_config(config, limiter=UnavailableLimiter())
    address = await nursery.start(
        lambda task_status: serve(config, gateway=gateway, task_status=task_status)
    )
    with pytest.raises(RelayError) as refused:
        async with open_relay(address.ws_url, api_key="unlimited", url=f"{target.url}/echo"):
            pass
    assert refused.value.code == 1013
    assert refused.value.message == "Rate limiter unavailable, try again later"
