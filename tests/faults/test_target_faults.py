"""Targets that fail over real sockets: dropped mid-message, or never finishing
their handshake.  Every timeout the relay has is set far beyond the tests' hang
guard except the one under test, so a behaviour that only happened when some
timeout fired would fail here instead of passing slowly."""

from __future__ import annotations

import contextlib
import json
from functools import partial

import pytest
import trio
from wsproto.utilities import LocalProtocolError

from relay.wire.frames import BINARY, TEXT
from tests.faults.misbehaving import Misbehaving, accept_websocket, frame_head, reset
from tests.support import wsp
from tests.support.conditions import eventually
from tests.support.gateway import Running, connect_json, make_config, refusal, start_gateway

PATIENT = {"close_timeout": 300.0, "dial_timeout": 300.0, "connect_timeout": 300.0}


async def _start(
    nursery: trio.Nursery, behaviour: object, **server: object
) -> tuple[Running, Misbehaving]:
    target = await nursery.start(Misbehaving(behaviour).serve)  # type: ignore[arg-type]
    running = await start_gateway(nursery, make_config(**{**PATIENT, **server}))
    return running, target


async def _all_freed(running: Running) -> None:
    stats, slots = running.gateway.registry.stats, running.gateway.slots
    await eventually(
        lambda: (
            stats.sessions_active == 0
            and len(running.gateway.registry.sessions) == 0
            and slots.held() == 0
        ),
        "the session's resources to be freed",
    )


async def _connected(running: Running, target: Misbehaving) -> wsp.WsprotoStream:
    client = await wsp.connect(running.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    return client


async def _half_a_frame(rst: bool, server: Misbehaving, stream: trio.SocketStream) -> None:
    await accept_websocket(stream)
    await stream.send_all(frame_head(TEXT, 1000) + b"x" * 500)
    if rst:
        reset(stream)


async def _between_fragments(rst: bool, server: Misbehaving, stream: trio.SocketStream) -> None:
    await accept_websocket(stream)
    await stream.send_all(frame_head(TEXT, 5, fin=False) + b"first")
    if rst:
        reset(stream)


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize(
    "where", [_half_a_frame, _between_fragments], ids=["mid-frame", "mid-message"]
)
async def test_target_drops_mid_message_client_gets_1011_at_once(
    nursery: trio.Nursery, where: object, rst: bool
) -> None:
    running, target = await _start(nursery, partial(where, rst))  # type: ignore[operator]
    client = await _connected(running, target)
    events = []
    while not isinstance(event := await client.next_event(), wsp.CloseConnection | None):
        events.append(event)
    assert isinstance(event, wsp.CloseConnection)
    assert (event.code, event.reason) == (1011, "target connection lost")
    # Nothing of a frame the target never finished reached the client.
    assert all(isinstance(e, wsp.TextMessage) and e.data == "first" for e in events)
    await client.send(event.response())
    assert await client.next_event() is None  # then the relay closes the TCP connection
    await _all_freed(running)


async def _half_a_large_frame(server: Misbehaving, stream: trio.SocketStream) -> None:
    await accept_websocket(stream)
    await stream.send_all(frame_head(BINARY, 200_000) + b"\xab" * 100_000)


async def test_target_drops_mid_large_frame_client_is_disconnected(nursery: trio.Nursery) -> None:
    """A frame over 64 KiB is streamed as it arrives; cut off half-way, no close
    frame can follow it, so the client is disconnected (README, "A connection lost
    mid-frame")."""
    running, target = await _start(nursery, _half_a_large_frame)
    client = await _connected(running, target)
    received = 0
    while (event := await client.next_event()) is not None:
        assert isinstance(event, wsp.BytesMessage)  # never a close frame
        assert not event.message_finished
        received += len(event.data)
    assert received == 100_000  # every byte the target sent, then the end of the stream
    # A client closes at the end of the stream; the gateway, which half-closed the
    # connection rather than reset it, then frees the session at once (close_timeout
    # is 300 s here: nothing waits it out).
    await client.stream.aclose()
    await _all_freed(running)


async def _after_connected_then_drop(server: Misbehaving, stream: trio.SocketStream) -> None:
    conn = await accept_websocket(stream)
    await conn.next_event()  # one message from the client, then gone
    reset(stream)


async def test_target_drops_while_client_sends(nursery: trio.Nursery) -> None:
    running, target = await _start(nursery, _after_connected_then_drop)
    client = await _connected(running, target)

    stop = trio.Event()

    async def keep_sending() -> None:
        # Stops between messages, never in the middle of one (the close answer follows).
        with contextlib.suppress(trio.BrokenResourceError, LocalProtocolError):
            while not stop.is_set():  # the relay must notice the target is gone all the same
                await client.send(wsp.BytesMessage(b"x" * 10_000))

    async with trio.open_nursery() as sending:
        sending.start_soon(keep_sending)
        while not isinstance(event := await client.next_event(), wsp.CloseConnection | None):
            pass
        stop.set()
    assert isinstance(event, wsp.CloseConnection)
    assert (event.code, event.reason) == (1011, "target connection lost")
    with contextlib.suppress(trio.BrokenResourceError):
        await client.send(event.response())
    await _all_freed(running)


# --- targets that never finish their handshake: bounded by the dial timeout ------------------


async def _silent(server: Misbehaving, stream: trio.SocketStream) -> None:
    await server.wait_for_peer_close(stream)


async def _half_an_answer(server: Misbehaving, stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)
    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
    await server.wait_for_peer_close(stream)


async def _trickle(server: Misbehaving, stream: trio.SocketStream) -> None:
    """One byte of an endless header every 20 ms: never done, never idle."""
    await stream.receive_some(65536)
    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: ")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.wait_for_peer_close, stream)
        while not server.closed_by_peer[-1].is_set():
            await stream.send_all(b"a")
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("behaviour", "scheme", "stage"),
    [
        (_silent, "ws", "the WebSocket handshake with the target"),
        (_half_an_answer, "ws", "the WebSocket handshake with the target"),
        (_trickle, "ws", "the WebSocket handshake with the target"),
        (_silent, "wss", "the TLS handshake with the target"),
    ],
    ids=["silent", "half-answer", "trickle", "tls-silent"],
)
async def test_target_never_finishing_its_handshake_is_bounded_by_the_dial_timeout(
    nursery: trio.Nursery, behaviour: object, scheme: str, stage: str
) -> None:
    running, target = await _start(nursery, behaviour, dial_timeout=0.5)
    start = trio.current_time()
    url = f"{scheme}://127.0.0.1:{target.port}/"
    message, code, _ = await refusal(running.ws_url, connect_json(url))
    assert trio.current_time() - start >= 0.5
    assert (message, code) == (f"Target connection timed out after 0.5 s during {stage}", 1011)
    # The relay closed its half-open connection to the target.
    await target.closed_by_peer[0].wait()
    await _all_freed(running)
