"""Every ending, under traffic, over real sockets: nothing lost, nothing reordered,
and the documented close — or, only where a frame over 64 KiB lost its sender
mid-frame, no close at all.

Clients and targets are wsproto (an implementation independent of the relay's
own frame code), on 127.0.0.1, both sending mixed text/binary messages of 1 B to
256 KiB while reading the other side.  Each round draws its sessions' endings
from a seed that the test prints; ``RELAY_ENDINGS_SEED=N`` replays one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
from functools import partial

import attrs
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from relay.config import KeyConfig
from tests.faults.misbehaving import frame_head
from tests.support.gateway import KEY, Running, make_config, start_gateway
from tests.support.wsp import WsprotoStream

CLOSE_TIMEOUT = 20.0  # a session that waited this long missed an answer
SESSIONS = 24
ROUNDS = 6
ENDINGS = (
    "client_closes",  # 1000 relayed, answered end to end
    "target_closes",  # 4000 relayed, answered end to end
    "client_gone",  # the client's TCP ends without a close frame
    "target_gone",  # the target's TCP ends without a close frame
    "target_gone_mid_frame",  # ... half-way through a frame over 64 KiB
    "target_gone_mid_small_frame",  # ... half-way through a held frame (<= 64 KiB)
    "idle_timeout",  # the target stops sending
)

Message = str | bytes


@attrs.define
class Side:
    """What one end sent and saw."""

    sent: list[Message] = attrs.Factory(list)
    received: list[Message] = attrs.Factory(list)
    close: tuple[int | None, str] | None = None
    eof_without_close: bool = False


@attrs.frozen
class Plan:
    index: int
    ending: str
    messages: int
    slow_reader: bool = False  # the client reads with a pause between messages


async def _open_client(port: int) -> tuple[Conn, trio.SocketStream]:
    """A wsproto client connection to the gateway's ``/ws``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Conn(stream, WSConnection(ConnectionType.CLIENT))
    await conn.send(Request(host="relay", target="/ws"))
    assert isinstance(await conn.next_event(), AcceptConnection)
    return conn, stream


async def _accept(stream: trio.SocketStream) -> tuple[WsprotoStream, int]:
    """Answer the relay's upgrade; the session index from the path ``/x/<index>``."""
    conn = Conn(stream, WSConnection(ConnectionType.SERVER))
    request = await conn.next_event()
    assert isinstance(request, Request)
    await conn.send(AcceptConnection())
    return conn, int(request.target.rsplit("/", 1)[1])


def _payloads(rng: random.Random, count: int) -> list[Message]:
    out: list[Message] = []
    for _ in range(count):
        size = rng.choice((1, 7, 125, 126, 1000, 65535, 65536, 70_000, 256 * 1024))
        if rng.random() < 0.5:
            out.append("t" * size)
        else:
            out.append(rng.randbytes(size))
    return out


class Conn(WsprotoStream):
    """wsproto over Trio with one sender at a time (the reader answers closes
    while the writer may still be sending)."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        super().__init__(stream, ws)
        self.lock = trio.Lock()

    async def send(self, event: Event) -> None:
        async with self.lock:
            await super().send(event)


async def _send_all(conn: WsprotoStream, messages: list[Message], side: Side) -> None:
    """Send ``messages`` in order until done or the connection is closing."""
    for message in messages:
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        try:
            await conn.send(event)
        except (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # closing: what was not sent is not expected anywhere
        side.sent.append(message)


def _digest(messages: list[Message]) -> list[tuple[str, int, str]]:
    """Messages as (type, length, hash): comparable, and short in a failure report."""
    return [
        (
            type(m).__name__,
            len(m),
            hashlib.sha256(m.encode() if isinstance(m, str) else m).hexdigest()[:12],
        )
        for m in messages
    ]


async def _read_all(conn: WsprotoStream, side: Side, *, slow: bool = False) -> None:
    """Collect messages until a close (answered) or EOF."""
    while True:
        if slow:
            await trio.sleep(0.005)  # pacing a slow reader, not a wait for state
        try:
            item = await conn.next_message()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            item = None
        if item is None:
            side.eof_without_close = side.close is None
            return
        if isinstance(item, CloseConnection):
            side.close = (item.code, item.reason)
            if conn.ws.state is ConnectionState.REMOTE_CLOSING:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await conn.send(item.response())
            return
        side.received.append(item)


@attrs.define
class Round:
    """The target side of one round: plans by path, what each target saw."""

    plans: dict[int, Plan]
    targets: dict[int, Side] = attrs.Factory(dict)
    target_payloads: dict[int, list[Message]] = attrs.Factory(dict)
    port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            conn, index = await _accept(stream)
            await self._play(conn, stream, self.plans[index])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _play(self, conn: WsprotoStream, stream: trio.SocketStream, plan: Plan) -> None:
        side = self.targets[plan.index] = Side()
        payloads = self.target_payloads[plan.index]
        ending = plan.ending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_all, conn, side)
            if ending == "idle_timeout":
                await _send_all(conn, payloads, side)
                return  # then silence: the relay's idle deadline ends the session
            await _send_all(conn, payloads, side)
            if ending == "target_closes":
                await conn.send(CloseConnection(code=4000, reason="target done"))
            elif ending.startswith("target_gone"):
                if ending == "target_gone_mid_frame":
                    await stream.send_all(frame_head(0x2, 200_000) + bytes(100_000))
                elif ending == "target_gone_mid_small_frame":
                    await stream.send_all(frame_head(0x2, 30_000) + bytes(10_000))
                # A FIN, no close frame; reading goes on so no RST cuts the relay short.
                stream.socket.shutdown(socket.SHUT_WR)


async def _client(running: Running, port: int, plan: Plan, payloads: list[Message]) -> Side:
    side = Side()
    conn, stream = await _open_client(running.address.port)
    connect: dict[str, object] = {"apiKey": KEY, "url": f"ws://127.0.0.1:{port}/s/{plan.index}"}
    if plan.ending == "idle_timeout":
        connect["idle_timeout"] = 0.5
    await conn.send(TextMessage(json.dumps(connect)))
    first = await conn.next_message()
    assert isinstance(first, str), first
    assert json.loads(first)["type"] == "connected", first
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(_read_all, conn, side, slow=plan.slow_reader))
        await _send_all(conn, payloads, side)
        if plan.ending == "client_closes":
            await conn.send(CloseConnection(code=1000, reason="client done"))
        elif plan.ending == "client_gone":
            stream.socket.shutdown(socket.SHUT_WR)
    await trio.aclose_forcefully(stream)
    return side


def _is_prefix(got: list[Message], sent: list[Message]) -> bool:
    return _digest(got) == _digest(sent[: len(got)])


def _same(got: list[Message], sent: list[Message]) -> bool:
    return _digest(got) == _digest(sent)


def _check(plan: Plan, client: Side, target: Side, where: str) -> None:
    """The documented outcome of ``plan.ending`` for both sides."""
    ending = plan.ending
    # Never a gap or a reorder, whatever the ending.
    assert _is_prefix(client.received, target.sent), f"{where}: client got a gap/reorder"
    assert _is_prefix(target.received, client.sent), f"{where}: target got a gap/reorder"
    for side in (client, target):
        assert side.close is None or side.close[0] != 1002, f"{where}: a false 1002"
    if ending == "client_closes":
        assert _same(target.received, client.sent), where
        assert _same(client.received, target.sent), where
        assert target.close == (1000, "client done"), where
        assert client.close == (1000, "client done"), where  # the target's answer
    elif ending == "target_closes":
        assert _same(client.received, target.sent), where
        assert _same(target.received, client.sent), where
        assert client.close == (4000, "target done"), where
        assert target.close == (4000, "target done"), where
    elif ending == "client_gone":
        assert _same(target.received, client.sent), where
        assert target.close == (1011, "client connection lost"), where
    elif ending in ("target_gone", "target_gone_mid_small_frame"):
        # A held frame cut short never reaches the client: a well-formed 1011 follows
        # every whole message.
        assert _same(client.received, target.sent), where
        assert client.close == (1011, "target connection lost"), where
    elif ending == "target_gone_mid_frame":
        # The one exception: half of a streamed frame went out, no close can follow.
        assert _same(client.received, target.sent), where
        assert client.close is None, where
        assert client.eof_without_close, where
    elif ending == "idle_timeout":
        assert _same(client.received, target.sent), where
        assert client.close == (1000, "idle timeout"), where
        assert target.close == (1000, "idle timeout"), where


async def _run_round(seed: int) -> None:
    rng = random.Random(seed)
    plans = {
        i: Plan(i, rng.choice(ENDINGS), rng.randint(0, 6), rng.random() < 0.5)
        for i in range(SESSIONS)
    }
    # Where the target ends the session, the client is still sending when it does:
    # its frames are in flight while the relay phase is cancelled.
    client_payloads = {
        i: (
            _payloads(rng, plan.messages) + [rng.randbytes(rng.randint(1, 125)) for _ in range(200)]
            if plan.ending.startswith("target")
            else _payloads(rng, plan.messages)
        )
        for i, plan in plans.items()
    }
    round_ = Round(plans)
    round_.target_payloads = {i: _payloads(rng, plans[i].messages) for i in plans}
    config = make_config(
        keys=(KeyConfig(key=KEY, rate=10_000.0, burst=10_000),),
        close_timeout=CLOSE_TIMEOUT,
    )
    clients: dict[int, Side] = {}
    async with trio.open_nursery() as nursery:
        running = await start_gateway(nursery, config)
        port = await nursery.start(round_.serve)
        start = trio.current_time()

        async def one(index: int) -> None:
            clients[index] = await _client(running, port, plans[index], client_payloads[index])

        async with trio.open_nursery() as sessions:
            for index in plans:
                sessions.start_soon(one, index)
        # No session waited out close_timeout for an answer its peer had sent.
        assert trio.current_time() - start < CLOSE_TIMEOUT, f"seed {seed}: a close wait ran out"
        nursery.cancel_scope.cancel()
    for index, plan in plans.items():
        where = f"seed {seed}, session {index} ({plan.ending})"
        _check(plan, clients[index], round_.targets[index], where)


@pytest.mark.parametrize("round_number", range(ROUNDS))
async def test_endings_under_traffic(round_number: int) -> None:
    fixed = os.environ.get("RELAY_ENDINGS_SEED")
    seed = int(fixed) if fixed else random.SystemRandom().randrange(1 << 32)
    print(f"RELAY_ENDINGS_SEED={seed}")  # shown with a failure, for a replay
    await _run_round(seed)


async def test_drain_with_large_frames_in_flight_both_ways() -> None:
    """At the drain deadline, 4 MiB frames are mid-flight up and down: each is
    finished as its bytes arrive, then every client and every target gets 1001."""
    big = 4 * 1024 * 1024
    config = make_config(
        keys=(KeyConfig(key=KEY, rate=10_000.0, burst=10_000),),
        drain_period=0.3,
        close_timeout=CLOSE_TIMEOUT,
    )
    plans = {i: Plan(i, ("up", "down", "small")[i % 3], 1) for i in range(9)}

    async def paced(stream: trio.SocketStream, frame: bytes) -> None:
        # Bytes trickle out over ~1 s, so the frame is mid-flight at the deadline.
        for start in range(0, len(frame), 256 * 1024):
            await stream.send_all(frame[start : start + 256 * 1024])
            await trio.sleep(0.06)

    down_frame = frame_head(0x2, big) + bytes(big)
    up_payload = b"u" * big
    targets: dict[int, Side] = {}
    clients: dict[int, Side] = {}

    async def target(stream: trio.SocketStream) -> None:
        try:
            conn, index = await _accept(stream)
            side = targets[index] = Side()
            async with trio.open_nursery() as inner:
                inner.start_soon(_read_all, conn, side)
                if plans[index].ending == "down":
                    side.sent.append(
                        bytes(big)
                    )  # recorded first: the test may end in the last pause
                    await paced(stream, down_frame)
                elif plans[index].ending == "small":
                    await _send_all(conn, ["small"], side)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        running = await start_gateway(nursery, config)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, target, listeners)
        started = trio.Event()
        count = [0]

        async def client(index: int) -> None:
            side = clients[index] = Side()
            conn, stream = await _open_client(running.address.port)
            url = f"ws://127.0.0.1:{port}/d/{index}"
            await conn.send(TextMessage(json.dumps({"apiKey": KEY, "url": url})))
            assert json.loads(str(await conn.next_message()))["type"] == "connected"
            count[0] += 1
            if count[0] == len(plans):
                started.set()
            async with trio.open_nursery() as inner:
                inner.start_soon(_read_all, conn, side)
                if plans[index].ending == "up":
                    # A masked frame written by wsproto, sent in paced slices.
                    frame = conn.ws.send(BytesMessage(up_payload))
                    side.sent.append(up_payload)
                    await paced(stream, frame)
            await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as sessions:
            for index in plans:
                sessions.start_soon(client, index)
            await started.wait()
            running.gateway.registry.request_shutdown()
        nursery.cancel_scope.cancel()  # the target's listener
    for index, plan in plans.items():
        where = f"session {index} ({plan.ending})"
        client_side, target_side = clients[index], targets[index]
        assert client_side.close == (1001, "server shutting down"), where
        assert target_side.close == (1001, "server shutting down"), where
        assert _same(client_side.received, target_side.sent), where
        assert _same(target_side.received, client_side.sent), where
