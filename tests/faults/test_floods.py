"""Many bad connections at once, over real sockets: each is closed when its
deadline comes (or at once, for garbage), and the gateway keeps serving others.

The file-descriptor limit here is 20,000 and there are two cores: 1,000
connections (2,000 descriptors, both ends in this process) with a short
deadline keep this to seconds.
"""

from __future__ import annotations

import json
import random

import httpx
import trio

from relay.client import open_relay
from tests.support import wsp
from tests.support.conditions import eventually
from tests.support.gateway import KEY, Running, make_config, start_gateway
from tests.support.target import TargetServer

CROWD = 1000


async def _serves_others(running: Running, target: TargetServer) -> None:
    async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.send_message("still served")
        assert await relayed.websocket.get_message() == "still served"
    async with httpx.AsyncClient() as http:
        health = await http.get(running.address.http_url + "/healthz")
    assert health.status_code == 200


async def _all_freed(running: Running) -> None:
    stats, capacity = running.gateway.registry.stats, running.gateway.capacity
    await eventually(
        lambda: (
            stats.sessions_active == 0
            and len(running.gateway.registry.sessions) == 0
            and capacity.handshakes == 0
        ),
        "every connection to be released",
    )


async def test_a_thousand_sessions_without_a_connect_message(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    deadline = 3.0
    running = await start_gateway(nursery, make_config(connect_timeout=deadline))
    port = running.address.port
    expected = json.dumps({"type": "error", "message": "No connect message within 3 seconds"})
    results: list[tuple[float, str | bytes | object, int | None, bool]] = []
    upgraded = 0
    all_upgraded = trio.Event()

    async def silent() -> None:
        nonlocal upgraded
        started = trio.current_time()  # before the gateway can have started its clock
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = await wsp.client_handshake(stream, f"127.0.0.1:{port}", "/ws")
        upgraded += 1
        if upgraded == CROWD:
            all_upgraded.set()
        message = await client.next_message()  # sends nothing, waits for the verdict
        close = await client.next_event()
        assert isinstance(close, wsp.CloseConnection)
        await client.send(close.response())
        eof = await client.next_event() is None
        results.append((trio.current_time() - started, message, close.code, eof))
        await stream.aclose()

    async with trio.open_nursery() as crowd:
        for _ in range(CROWD):
            crowd.start_soon(silent)
        await all_upgraded.wait()
        await _serves_others(running, target)  # while the thousand wait
    assert len(results) == CROWD
    for elapsed, message, code, eof in results:
        assert elapsed >= deadline  # none closed early
        assert (message, code, eof) == (expected, 1008, True)
    await _all_freed(running)
    assert running.gateway.registry.stats.outcomes["connect_timeout"] == CROWD


async def test_connections_that_never_send_a_request_head(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(handshake_timeout=2.0))
    port = running.address.port
    waited: list[float] = []

    async def mute(greeting: bytes) -> None:
        started = trio.current_time()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(greeting)
        assert await stream.receive_some() == b""  # closed without an answer
        waited.append(trio.current_time() - started)
        await stream.aclose()

    async with trio.open_nursery() as crowd:
        for n in range(300):
            crowd.start_soon(mute, b"GET /ws HTTP/1.1\r\nHost: x\r\n"[: n % 30])
        await eventually(lambda: running.gateway.capacity.handshakes == 300, "all 300 waiting")
        await _serves_others(running, target)
    assert len(waited) == 300
    assert min(waited) >= 2.0
    await _all_freed(running)


GARBAGE = [
    b"\x00" * 5000,
    b"\xff\xfe" * 100,
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface: Hypercorn would keep it
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",  # likewise
    b"\x81\x85\x01\x02\x03\x04hello",  # a WebSocket frame, no handshake
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /ws HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",  # over the head limit
    b"G" * 70000,  # an endless method
    b"GET /" + b"a" * 70000,  # an endless request line
    b"\r\n\r\n\r\n",
]


async def test_garbage_instead_of_http_disturbs_nothing(
    gateway: Running, target: TargetServer
) -> None:
    port = gateway.address.port
    junk = [*GARBAGE, *(random.Random(seed).randbytes(2000) for seed in range(20))]

    async def send_junk(data: bytes) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(data)
            while await stream.receive_some():
                pass  # an error answer at most, then the connection is closed
        except trio.BrokenResourceError:
            pass  # closed before all of it was read: as good
        await stream.aclose()

    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        async with trio.open_nursery() as junkyard:
            for data in junk:
                junkyard.start_soon(send_junk, data)
            for n in range(20):  # the relayed session carries on meanwhile
                await relayed.websocket.send_message(f"message {n}")
                assert await relayed.websocket.get_message() == f"message {n}"
        await relayed.websocket.send_message("after the junk")
        assert await relayed.websocket.get_message() == "after the junk"
        assert gateway.gateway.registry.stats.sessions_active == 1
    await _all_freed(gateway)
