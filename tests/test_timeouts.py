"""Deadlines, idle timeouts and token refill, on in-memory streams with Trio's
autojump clock (time advances only when every task is blocked)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from relay.config import KeyConfig
from tests.support.gateway import KEY, connect_json, make_config, memory_client, memory_gateway
from tests.support.target import TargetServer


@pytest.fixture
def mem_target() -> TargetServer:
    return TargetServer()


async def _close_of(ws: object) -> tuple[int, str | None]:
    try:
        while True:
            await ws.get_message()  # type: ignore[attr-defined]
    except ConnectionClosed as closed:
        if closed.reason is None:
            raise AssertionError("closed without a reason object") from None
        return closed.reason.code, closed.reason.reason


async def test_no_connect_message_within_10_s_closes_1008(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    gateway = await memory_gateway(make_config(), mem_target, nursery)
    ws = await memory_client(gateway, nursery)
    start = trio.current_time()
    error = json.loads(await ws.get_message())
    waited = trio.current_time() - start
    assert error == {"type": "error", "message": "No connect message within 10 seconds"}
    assert 10.0 <= waited < 10.1
    assert await _close_of(ws) == (1008, "No connect message within 10 seconds")


async def test_connect_message_at_9_9_s_is_in_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    gateway = await memory_gateway(make_config(), mem_target, nursery)
    ws = await memory_client(gateway, nursery)
    await trio.sleep(9.9)
    await ws.send_message(connect_json("ws://target.test/echo"))
    assert json.loads(await ws.get_message())["type"] == "connected"
    # The deadline covers the connect message only, not the relayed session.
    await trio.sleep(60)
    await ws.send_message("still here")
    assert await ws.get_message() == "still here"


async def test_configured_connect_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    gateway = await memory_gateway(make_config(connect_timeout=2.5), mem_target, nursery)
    ws = await memory_client(gateway, nursery)
    start = trio.current_time()
    assert await _close_of(ws) == (1008, "No connect message within 2.5 seconds")
    assert 2.5 <= trio.current_time() - start < 2.6


async def test_idle_timeout_closes_both_sides_with_1000(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    gateway = await memory_gateway(make_config(), mem_target, nursery)
    ws = await memory_client(gateway, nursery)
    await ws.send_message(connect_json("ws://target.test/echo", idle_timeout=5))
    assert json.loads(await ws.get_message())["type"] == "connected"
    await trio.sleep(3)
    await ws.send_message("ping-ish")
    assert await ws.get_message() == "ping-ish"  # the echo pushes the deadline to t+5
    start = trio.current_time()
    assert await _close_of(ws) == (1000, "idle timeout")
    assert 5.0 <= trio.current_time() - start < 5.1
    record = mem_target.connections[0]
    await record.ended.wait()
    assert (record.close_code, record.close_reason) == (1000, "idle timeout")


async def test_idle_timeout_counts_target_messages_only(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    gateway = await memory_gateway(make_config(), mem_target, nursery)
    ws = await memory_client(gateway, nursery)
    # The target ticks every 3 s, four times; the idle timeout is 5 s.
    await ws.send_message(connect_json("ws://target.test/tick?every=3&count=4", idle_timeout=5))
    assert json.loads(await ws.get_message())["type"] == "connected"
    start = trio.current_time()
    for n in range(4):
        assert await ws.get_message() == f"tick {n}"
    # Client messages do not keep it alive; the last tick was at t=12.
    await ws.send_message("client chatter")
    assert await ws.get_message() == "client chatter"
    assert await _close_of(ws) == (1000, "idle timeout")
    assert 17.0 <= trio.current_time() - start < 17.1


async def test_idle_timeout_zero_means_none(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    gateway = await memory_gateway(make_config(), mem_target, nursery)
    ws = await memory_client(gateway, nursery)
    await ws.send_message(connect_json("ws://target.test/echo", idle_timeout=0))
    assert json.loads(await ws.get_message())["type"] == "connected"
    await trio.sleep(3600)
    await ws.send_message("an hour later")
    assert await ws.get_message() == "an hour later"


async def test_token_bucket_refills(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    config = make_config(keys=[KeyConfig(key=KEY, rate=0.5, burst=2)])
    gateway = await memory_gateway(config, mem_target, nursery)

    async def attempt() -> dict[str, object]:
        ws = await memory_client(gateway, nursery)
        await ws.send_message(connect_json("ws://target.test/echo"))
        answer: dict[str, object] = json.loads(await ws.get_message())
        await ws.aclose()
        return answer

    assert (await attempt())["type"] == "connected"
    assert (await attempt())["type"] == "connected"
    assert await attempt() == {"type": "error", "message": "Rate limit exceeded"}
    await trio.sleep(1.9)  # 0.95 tokens: not yet
    assert await attempt() == {"type": "error", "message": "Rate limit exceeded"}
    await trio.sleep(0.1)
    assert (await attempt())["type"] == "connected"
    await trio.sleep(100)  # refill stops at the burst
    assert (await attempt())["type"] == "connected"
    assert (await attempt())["type"] == "connected"
    assert (await attempt())["type"] == "error"


async def test_unanswered_close_is_bounded_by_close_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    from tests.support import wsp

    gateway = await memory_gateway(make_config(close_timeout=5.0), mem_target, nursery)
    ours, theirs = trio.testing.memory_stream_pair()
    from relay.asgi import GatewayApp
    from relay.httpserver import AsgiServer
    from relay.listener import handle_connection

    nursery.start_soon(handle_connection, gateway, AsgiServer(GatewayApp(gateway)), theirs)
    client = await wsp.client_handshake(ours, "relay.test", "/ws")
    await client.send(wsp.TextMessage(connect_json("ws://target.test/close?code=4005&reason=bye")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    close = await client.next_event()
    assert isinstance(close, wsp.CloseConnection)
    assert close.code == 4005
    # The client never answers; the gateway waits close_timeout, answers the
    # target itself with the target's own code, and drops the client.
    start = trio.current_time()
    assert await client.next_event() is None
    assert 5.0 <= trio.current_time() - start < 5.1
    record = mem_target.connections[0]
    await record.ended.wait()
    assert record.close_code == 4005


async def test_slow_request_head_is_dropped(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, mem_target: TargetServer
) -> None:
    from relay.asgi import GatewayApp
    from relay.httpserver import AsgiServer
    from relay.listener import handle_connection

    gateway = await memory_gateway(make_config(handshake_timeout=10.0), mem_target, nursery)
    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(handle_connection, gateway, AsgiServer(GatewayApp(gateway)), theirs)
    await ours.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finished
    start = trio.current_time()
    assert await ours.receive_some() == b""
    assert 10.0 <= trio.current_time() - start < 10.1
