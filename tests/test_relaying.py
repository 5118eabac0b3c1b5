"""Relaying over real loopback sockets: messages, closes, pings, fragments, limits."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.client import open_relay
from tests.support import wsp
from tests.support.gateway import KEY, Running, connect_json, make_config, start_gateway
from tests.support.target import TargetServer

MESSAGES: list[str | bytes] = [
    "hello",
    b"\x00\x01\x02binary\xff",
    "",
    b"",
    "unicode: żółć 日本語 🚀",
    b"\x00" * 125,
    b"\x01" * 126,
    "x" * 65535,
    "y" * 65536,
    bytes(range(256)) * 4096,  # 1 MiB
    "z" * (1024 * 1024 + 3),  # 1 MiB + 3, text
]


async def test_messages_relay_byte_exact_in_order(target: TargetServer, gateway: Running) -> None:
    echoed: list[str | bytes] = []
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        assert relayed.node_id == "relay-local"
        assert relayed.status == 101

        async def send_all() -> None:
            for message in MESSAGES:
                await relayed.websocket.send_message(message)

        # Reading while sending: backpressure would otherwise stall all three
        # parties once every buffer between them is full.
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                for _ in MESSAGES:
                    echoed.append(await relayed.websocket.get_message())
    for got, message in zip(echoed, MESSAGES, strict=True):
        assert type(got) is type(message)
        assert got == message
    assert target.connections[0].messages == MESSAGES


async def test_pipelined_messages_keep_order(target: TargetServer, gateway: Running) -> None:
    got: list[str | bytes] = []
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:

        async def send_all() -> None:
            for n in range(500):
                await relayed.websocket.send_message(f"m{n}" if n % 2 else f"m{n}".encode())

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                for _ in range(500):
                    got.append(await relayed.websocket.get_message())
    assert got == [f"m{n}" if n % 2 else f"m{n}".encode() for n in range(500)]


async def test_client_close_code_and_reason_reach_target(
    target: TargetServer, gateway: Running
) -> None:
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.send_message("before close")
        assert await relayed.websocket.get_message() == "before close"
        await relayed.websocket.aclose(4001, "client says bye")
        # The client's close handshake completed: the answer carries the code back.
        assert relayed.websocket.closed is not None
        assert relayed.websocket.closed.code == 4001
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    assert (record.close_code, record.close_reason) == (4001, "client says bye")


async def test_target_close_code_and_reason_reach_client(
    target: TargetServer, gateway: Running
) -> None:
    url = f"{target.url}/close?code=4002&reason=target+done"
    async with open_relay(gateway.ws_url, api_key=KEY, url=url) as relayed:
        with pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (4002, "target done")
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    # The target's close handshake completed with the client's answer.
    assert record.close_code == 4002


async def test_close_handshake_over_raw_frames(target: TargetServer, gateway: Running) -> None:
    client = await wsp.connect(gateway.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/echo")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    answer = await client.close(3000, "raw")
    assert isinstance(answer, wsp.CloseConnection)
    assert (answer.code, answer.reason) == (3000, "raw")
    # The gateway, as the server, then closes the TCP connection.
    with trio.fail_after(5):
        assert await client.next_event() is None


async def test_target_lost_closes_client_with_1011(target: TargetServer, gateway: Running) -> None:
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/drop?after=1") as relayed:
        await relayed.websocket.send_message("one")
        assert await relayed.websocket.get_message() == "one"
        with pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1011
    assert closed.value.reason.reason == "target connection lost"


async def test_target_lost_mid_message_closes_client_with_1011(
    target: TargetServer, gateway: Running
) -> None:
    client = await wsp.connect(gateway.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/dropmid")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    events = []
    with trio.fail_after(5):
        while (event := await client.next_event()) is not None:
            events.append(event)
            if isinstance(event, wsp.CloseConnection):
                break
    # The first fragment arrived, then a well-formed close frame.
    assert isinstance(events[0], wsp.TextMessage)
    assert events[0].data == "first half "
    assert isinstance(events[-1], wsp.CloseConnection)
    assert events[-1].code == 1011


async def test_client_lost_closes_target_with_1011(target: TargetServer, gateway: Running) -> None:
    client = await wsp.connect(gateway.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/echo")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    await client.send(wsp.TextMessage("hi"))
    assert await client.next_message() == "hi"
    await trio.aclose_forcefully(client.stream)
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    assert (record.close_code, record.close_reason) == (1011, "client connection lost")


async def test_client_ping_is_answered(target: TargetServer, gateway: Running) -> None:
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        with trio.fail_after(5):
            await relayed.websocket.ping(b"are you there")
        await relayed.websocket.send_message("still relaying")
        assert await relayed.websocket.get_message() == "still relaying"


async def test_target_ping_is_answered_by_client(target: TargetServer, gateway: Running) -> None:
    url = f"{target.url}/ping?payload=hello-ping"
    async with open_relay(gateway.ws_url, api_key=KEY, url=url) as relayed:
        # An echo round trip after the ping proves the pong went back first.
        await relayed.websocket.send_message("sync")
        assert await relayed.websocket.get_message() == "sync"
    assert target.connections[0].pongs == [b"hello-ping"]


async def test_fragmented_messages_arrive_intact_both_ways(
    target: TargetServer, gateway: Running
) -> None:
    client = await wsp.connect(gateway.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/fragments")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    # From the target: three fragments with a ping between them.
    assert await client.next_message() == "one two three"
    # From the client: fragments, with a ping interleaved.
    await client.send(wsp.BytesMessage(b"a" * 10, message_finished=False))
    await client.send(wsp.Ping(b"mid"))
    await client.send(wsp.BytesMessage(b"b" * 70000, message_finished=False))
    await client.send(wsp.BytesMessage(b"c", message_finished=True))
    events = []
    while True:
        event = await client.next_event()
        assert event is not None
        events.append(event)
        if isinstance(event, wsp.BytesMessage) and event.message_finished:
            break
    assert any(isinstance(e, wsp.Pong) and e.payload == b"mid" for e in events)
    data = b"".join(bytes(e.data) for e in events if isinstance(e, wsp.BytesMessage))
    assert data == b"a" * 10 + b"b" * 70000 + b"c"
    assert target.connections[0].messages[-1] == data


async def test_over_limit_from_client_closes_both_with_1009(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(max_message_size=1024 * 1024))
    async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.send_message(b"\x00" * (1024 * 1024))  # at the limit: fine
        assert len(await relayed.websocket.get_message()) == 1024 * 1024
        with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012
            # The close may arrive while the client is still sending.
            await relayed.websocket.send_message(b"\x00" * (1024 * 1024 + 1))
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1009
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    assert record.close_code == 1009


async def test_over_limit_fragmented_message_is_counted_whole(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(max_message_size=1000))
    client = await wsp.connect(running.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/echo")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    for _ in range(3):
        await client.send(wsp.BytesMessage(b"x" * 400, message_finished=False))
    event = await client.next_event()
    assert isinstance(event, wsp.CloseConnection)
    assert event.code == 1009


async def test_over_limit_from_target_closes_both_with_1009(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(max_message_size=4096))
    url = f"{target.url}/big?size=5000"
    async with open_relay(running.ws_url, api_key=KEY, url=url) as relayed:
        with pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1009
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    assert record.close_code == 1009


async def test_masked_frame_from_target_is_a_protocol_error(
    target: TargetServer, gateway: Running
) -> None:
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/masked") as relayed:
        with pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1011
    assert closed.value.reason.reason == "target protocol error"
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    assert record.close_code == 1002


async def test_unmasked_client_frame_is_a_protocol_error(
    target: TargetServer, gateway: Running
) -> None:
    client = await wsp.connect(gateway.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/echo")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    await client.send_raw(b"\x81\x02hi")  # a client frame without a mask
    event = await client.next_event()
    assert isinstance(event, wsp.CloseConnection)
    assert event.code == 1002
    record = target.connections[0]
    with trio.fail_after(5):
        await record.ended.wait()
    assert (record.close_code, record.close_reason) == (1011, "client protocol error")


async def test_headers_and_cookies_reach_the_target(target: TargetServer, gateway: Running) -> None:
    async with open_relay(
        gateway.ws_url,
        api_key=KEY,
        url=f"{target.url}/headers?x=1",
        headers={
            "Authorization": "Bearer token",
            "Origin": "https://target.example",
            "Cookie": "a=1",
        },
        cookies={"session": "abc123", "theme": "dark"},
    ) as relayed:
        seen = json.loads(await relayed.websocket.get_message())
    assert seen["path"] == "/headers"
    headers = seen["headers"]
    assert headers["authorization"] == "Bearer token"
    assert headers["origin"] == "https://target.example"
    assert headers["cookie"] == "a=1; session=abc123; theme=dark"
    assert headers["host"] == f"127.0.0.1:{target.port}"


async def test_target_frames_sent_right_after_upgrade_follow_connected(
    target: TargetServer, gateway: Running
) -> None:
    async with open_websocket_url(gateway.ws_url) as ws:
        await ws.send_message(connect_json(f"{target.url}/headers"))
        first = json.loads(await ws.get_message())
        second = json.loads(await ws.get_message())
    assert first == {"type": "connected", "status": 101, "node_id": "relay-local"}
    assert second["path"] == "/headers"


async def test_hundred_concurrent_sessions(target: TargetServer, gateway: Running) -> None:
    results: dict[int, list[str | bytes]] = {}

    async def one(n: int) -> None:
        async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
            got = []
            for i in range(20):
                message: str | bytes = f"{n}:{i}" if i % 2 else f"{n}:{i}".encode() * 100
                await relayed.websocket.send_message(message)
                got.append(await relayed.websocket.get_message())
            results[n] = got

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(one, n)
    assert len(results) == 100
    for n, got in results.items():
        assert got == [f"{n}:{i}" if i % 2 else f"{n}:{i}".encode() * 100 for i in range(20)]
    assert gateway.gateway.registry.stats.sessions_started == 100
