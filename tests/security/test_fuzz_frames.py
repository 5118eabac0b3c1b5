"""Property-based tests of the frame parsers, beyond tests/test_frames.py: the
outcome never depends on how the bytes were split, and a whole session relays
any split of a valid stream identically and survives any garbage.

tests/test_frames.py covers single-frame messages split at random and random
bytes fed once; here: fragmented messages with control frames between the
fragments, frames large enough to be streamed, split invariance of arbitrary
input, the connect phase's reader, and the same properties end to end.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.utilities import LocalProtocolError

from relay.wire.frames import (
    BINARY,
    CONTINUATION,
    HOLD_LIMIT,
    PING,
    PONG,
    TEXT,
    CloseFrame,
    Frame,
    FrameReader,
    FrameRelay,
    Violation,
    encode_close,
    encode_frame,
)
from tests.support import wsp
from tests.support.gateway import KEY, make_config, memory_gateway
from tests.support.target import TargetServer

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


def _pieces(data: bytes, cut_points: list[int]) -> list[bytes]:
    bounds = sorted({c % (len(data) + 1) for c in cut_points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _relay(data: bytes, cut_points: list[int], *, from_client: bool) -> tuple[bytes, object, bool]:
    relay = FrameRelay(from_client=from_client, max_message_size=1 << 20)
    out: list[bytes] = []
    stop: object = None
    for piece in _pieces(data, cut_points):
        chunk = relay.feed(piece)
        out.append(bytes(chunk.out))
        if chunk.stop is not None:
            stop = chunk.stop
            break
    return b"".join(out), stop, relay.mid_frame


def _read(data: bytes, cut_points: list[int]) -> list[Frame | Violation]:
    reader = FrameReader(from_client=True, max_frame=4096)
    items: list[Frame | Violation] = []
    for piece in _pieces(data, cut_points):
        reader.feed(piece)
        while (item := reader.next_frame()) is not None:
            items.append(item)
            if isinstance(item, Violation):
                return items
    return items


# Messages as a client sends them: split into fragments at random points, with pings
# and pongs between fragments; now and then one large enough (over HOLD_LIMIT) to be
# streamed rather than held. Text is valid UTF-8 as a whole (the endpoint judges it).
Message = tuple[int, bytes, list[int], list[tuple[int, bytes]]]
payloads = st.one_of(
    st.tuples(st.just(TEXT), st.text(max_size=300).map(str.encode)),
    st.tuples(st.just(BINARY), st.binary(max_size=300)),
    st.tuples(st.sampled_from([TEXT, BINARY]), st.just(b"L" * (HOLD_LIMIT + 1000))),
)
stream_messages = st.lists(
    st.builds(
        lambda kind, splits, between: (kind[0], kind[1], splits, between),
        payloads,
        st.lists(st.integers(min_value=0), max_size=3),
        st.lists(st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125)), max_size=2),
    ),
    min_size=1,
    max_size=4,
)


def _wire(
    messages: list[Message], *, masked: bool, close: bool = True, key: bytes | None = None
) -> bytes:
    def mask() -> bytes | None:
        return (key or os.urandom(4)) if masked else None

    out = b""
    for opcode, payload, splits, between in messages:
        parts = _pieces(payload, splits)
        if not parts:
            parts = [b""]
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            out += encode_frame(opcode if n == 0 else CONTINUATION, part, mask=mask(), fin=last)
            if not last:
                for control, body in between:
                    out += encode_frame(control, body, mask=mask())
    return out + encode_close(1000, "done", mask=mask()) if close else out


def _frames(data: bytes, *, masked: bool) -> list[Frame]:
    reader = FrameReader(from_client=masked, max_frame=1 << 30)
    reader.feed(data)
    frames: list[Frame] = []
    while (item := reader.next_frame()) is not None:
        assert isinstance(item, Frame)
        frames.append(item)
    return frames


@SETTINGS
@given(messages=stream_messages, first=cuts, second=cuts)
def test_fragmented_streams_relay_identically_however_split(
    messages: list[Message], first: list[int], second: list[int]
) -> None:
    server_wire = _wire(messages, masked=False)
    out, stop, _ = _relay(server_wire, first, from_client=False)
    assert out == server_wire  # server frames pass byte for byte
    assert stop == CloseFrame(1000, "done", b"\x03\xe8done")
    client_wire = _wire(messages, masked=True)
    out_a, stop_a, _ = _relay(client_wire, first, from_client=True)
    out_b, stop_b, _ = _relay(client_wire, second, from_client=True)
    # Re-masked with fresh keys, so the bytes differ; the frames do not.
    assert _frames(out_a, masked=True) == _frames(out_b, masked=True)
    assert _frames(out_a, masked=True) == _frames(client_wire, masked=True)
    assert stop_a == stop_b == stop


def _corrupt(wire: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(wire)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    return bytes(data)


# Valid streams with a few bytes overwritten: they get past the first header.
corrupted = st.builds(
    lambda messages, masked, flips: _corrupt(_wire(messages, masked=masked, key=b"k3y!"), flips),
    stream_messages,
    st.booleans(),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=3000) | corrupted, first=cuts, second=cuts)
def test_any_bytes_give_the_same_outcome_however_split(
    data: bytes, first: list[int], second: list[int]
) -> None:
    for from_client in (False, True):
        out_a, stop_a, mid_a = _relay(data, first, from_client=from_client)
        out_b, stop_b, mid_b = _relay(data, second, from_client=from_client)
        assert stop_a == stop_b
        assert len(out_a) == len(out_b)
        assert mid_a == mid_b
        if not from_client:
            assert out_a == out_b
            assert data.startswith(out_a)
        assert stop_a is None or isinstance(stop_a, CloseFrame | Violation)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=3000) | corrupted, first=cuts, second=cuts)
def test_connect_phase_reader_is_split_invariant(
    data: bytes, first: list[int], second: list[int]
) -> None:
    items = _read(data, first)
    assert items == _read(data, second)
    for item in items:
        assert isinstance(item, Frame | Violation)
        if isinstance(item, Violation):
            assert item.code in (1002, 1009)


# --- end to end, over in-memory streams ------------------------------------------------------


class _Target(TargetServer):
    """The scripted echo target, tolerant of what garbage makes wsproto refuse to send
    (an echo due after the peer's close arrived in the same read)."""

    async def handle(self, stream: trio.abc.Stream) -> None:
        with contextlib.suppress(LocalProtocolError):
            await super().handle(stream)


async def _session(nursery: trio.Nursery) -> tuple[wsp.WsprotoStream, TargetServer]:
    from relay.asgi import GatewayApp
    from relay.httpserver import AsgiServer
    from relay.listener import handle_connection

    target = _Target()
    gateway = await memory_gateway(make_config(max_message_size=1 << 20), target, nursery)
    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(handle_connection, gateway, AsgiServer(GatewayApp(gateway)), theirs)
    client = await wsp.client_handshake(ours, "relay.test", "/ws")
    connect = json.dumps({"apiKey": KEY, "url": "ws://target.test/echo"})
    await client.send(wsp.TextMessage(connect))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    return client, target


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=stream_messages, cut_points=cuts)
async def test_a_session_relays_any_split_identically(
    messages: list[Message], cut_points: list[int]
) -> None:
    with trio.fail_after(60):  # hang guard
        async with trio.open_nursery() as nursery:
            client, target = await _session(nursery)
            for piece in _pieces(_wire(messages, masked=True, close=False), cut_points):
                await client.stream.send_all(piece)
            sent = [payload.decode() if op == TEXT else payload for op, payload, _, _ in messages]
            echoed = [await client.next_message() for _ in sent]
            assert echoed == sent
            assert target.connections[0].messages == sent
            closed = await client.close(4000, "bye")
            assert closed is not None
            assert closed.code == 4000
            nursery.cancel_scope.cancel()


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage=st.binary(min_size=1, max_size=2000) | corrupted, cut_points=cuts)
async def test_a_session_survives_any_bytes(garbage: bytes, cut_points: list[int]) -> None:
    errors = _Errors()
    logging.getLogger("relay").addHandler(errors)
    try:
        with trio.fail_after(60):  # hang guard
            async with trio.open_nursery() as nursery:
                client, _target = await _session(nursery)
                try:
                    for piece in _pieces(garbage, cut_points):
                        await client.stream.send_all(piece)
                    await client.stream.send_eof()  # type: ignore[attr-defined]
                except trio.BrokenResourceError:
                    pass  # the gateway closed first: fine
                while await client.stream.receive_some():
                    pass
                nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("relay").removeHandler(errors)
    assert errors.records == []
