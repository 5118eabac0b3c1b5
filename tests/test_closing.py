"""The closing rules as a table: how the relay phase ended and each hop's state →
the close (code, reason) each side is sent, and whether the relay waits for its
answer.  In-memory streams, no sockets; the peers never answer, so a side that
is waited for is closed exactly ``GRACE`` seconds after the end, and one that is
not, at once — plus ``GRACE`` when the relay first waited for the rest of a
frame owed to a side.  docs/architecture.md ("Closing") states the same rules
in words; tests/test_cancellation.py covers the frames that do arrive.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing

from relay.dataplane.closing import end_relay
from relay.dataplane.hop import Hop
from relay.dataplane.pumps import Ending
from relay.wire.closecodes import CloseCode, Outcome
from relay.wire.frames import (
    BINARY,
    CLOSE,
    FrameReader,
    Violation,
    encode_frame,
    parse_close_payload,
)

GRACE = 5.0
NOTHING = "no close frame"
Setup = Callable[[Hop, Hop], None]


@attrs.frozen
class Side:
    """What one peer saw: the close frame it got (or NOTHING), whether its answer
    was waited for, and whether it was owed a close it could not be sent."""

    close: tuple[int | None, str] | str
    waited: bool
    skipped: bool = False


@attrs.frozen
class Row:
    name: str
    ending: Ending | None
    setup: Setup
    client: Side
    target: Side
    frame_wait: bool = False  # the relay first waits GRACE for a frame's rest


def _none(client: Hop, target: Hop) -> None:
    return None


def _both_closes_relayed(client: Hop, target: Hop) -> None:
    frame = parse_close_payload(b"\x03\xe8bye")
    client.peer_closed(frame)
    target.close_relayed(1000)
    target.peer_closed(frame)
    client.close_relayed(1000)


def _client_closed_first(code: bytes) -> Setup:
    def setup(client: Hop, target: Hop) -> None:
        client.peer_closed(parse_close_payload(code))
        target.close_relayed(parse_close_payload(code).code)

    return setup


def _target_lost(client: Hop, target: Hop) -> None:
    target.mark_lost()


def _client_lost(client: Hop, target: Hop) -> None:
    client.mark_lost()


def _unmasked_from_client(client: Hop, target: Hop) -> None:
    stop = client.incoming.feed(encode_frame(BINARY, b"x")).stop
    assert isinstance(stop, Violation)


def _masked_from_target(client: Hop, target: Hop) -> None:
    stop = target.incoming.feed(encode_frame(BINARY, b"x", mask=b"abcd")).stop
    assert isinstance(stop, Violation)


def _target_frame_half_forwarded(client: Hop, target: Hop) -> None:
    # A 100 KiB frame streams (over the 64 KiB hold limit): its head went to the client.
    head = encode_frame(BINARY, bytes(100 * 1024))[:2000]
    out = target.incoming.feed(head).out
    assert out
    assert target.incoming.mid_frame


def _client_send_broken(client: Hop, target: Hop) -> None:
    client.send_broken = True  # a send to the client was cut short by cancellation


def _but(first: Setup, second: Setup) -> Setup:
    def setup(client: Hop, target: Hop) -> None:
        first(client, target)
        second(client, target)

    return setup


TABLE = [
    Row(
        "both closes relayed",
        None,
        _both_closes_relayed,
        client=Side(NOTHING, waited=False),  # the server side closes TCP first
        target=Side(NOTHING, waited=True),  # given the chance to close its end first
    ),
    Row(
        "client closed, target never answered",
        Ending(Outcome.CLOSED, "close not answered"),
        _client_closed_first(b"\x0f\xa0going"),
        # Its own code back; its close is the answer, so nothing more is awaited.
        client=Side((4000, ""), waited=False),
        target=Side(NOTHING, waited=False),  # it was sent the close and said nothing
    ),
    Row(
        "client closed empty, then the target was lost",
        Ending(Outcome.TARGET_LOST),
        _but(_client_closed_first(b""), _target_lost),
        client=Side((None, ""), waited=False),
        target=Side(NOTHING, waited=False),
    ),
    Row(
        "client closed with a code not for the wire, target lost",
        Ending(Outcome.TARGET_LOST),
        _but(_client_closed_first(b"\x03\xee"), _target_lost),
        client=Side((CloseCode.PROTOCOL_ERROR, ""), waited=False),
        target=Side(NOTHING, waited=False),
    ),
    Row(
        "target lost",
        Ending(Outcome.TARGET_LOST),
        _target_lost,
        client=Side((CloseCode.INTERNAL_ERROR, "target connection lost"), waited=True),
        target=Side(NOTHING, waited=False),
    ),
    Row(
        "client lost",
        Ending(Outcome.CLIENT_LOST),
        _client_lost,
        client=Side(NOTHING, waited=False),
        target=Side((CloseCode.INTERNAL_ERROR, "client connection lost"), waited=True),
    ),
    Row(
        "idle timeout",
        Ending(Outcome.IDLE_TIMEOUT),
        _none,
        client=Side((CloseCode.NORMAL, "idle timeout"), waited=True),
        target=Side((CloseCode.NORMAL, "idle timeout"), waited=True),
    ),
    Row(
        "shutdown",
        Ending(Outcome.SHUTDOWN),
        _none,
        client=Side((CloseCode.GOING_AWAY, "server shutting down"), waited=True),
        target=Side((CloseCode.GOING_AWAY, "server shutting down"), waited=True),
    ),
    Row(
        "message too big",
        Ending(Outcome.MESSAGE_TOO_BIG, "message over 100 bytes"),
        _none,
        client=Side((CloseCode.MESSAGE_TOO_BIG, "message too big"), waited=True),
        target=Side((CloseCode.MESSAGE_TOO_BIG, "message too big"), waited=True),
    ),
    Row(
        "client broke the protocol",
        Ending(Outcome.CLIENT_PROTOCOL_ERROR, "frame from client not masked"),
        _unmasked_from_client,
        # Its stream cannot be framed any more: told why, not waited for.
        client=Side((CloseCode.PROTOCOL_ERROR, "frame from client not masked"), waited=False),
        target=Side((CloseCode.INTERNAL_ERROR, "client protocol error"), waited=True),
    ),
    Row(
        "target broke the protocol",
        Ending(Outcome.TARGET_PROTOCOL_ERROR, "frame from server masked"),
        _masked_from_target,
        client=Side((CloseCode.INTERNAL_ERROR, "target protocol error"), waited=True),
        target=Side((CloseCode.PROTOCOL_ERROR, "frame from server masked"), waited=False),
    ),
    Row(
        "shutdown with a target frame half-forwarded, its rest never comes",
        Ending(Outcome.SHUTDOWN),
        _target_frame_half_forwarded,
        # Waited GRACE for the rest of the frame; a close cannot follow half a frame.
        client=Side(NOTHING, waited=False, skipped=True),
        target=Side((CloseCode.GOING_AWAY, "server shutting down"), waited=True),
        frame_wait=True,
    ),
    Row(
        "target lost after a send to the client was cut short",
        Ending(Outcome.TARGET_LOST),
        _but(_client_send_broken, _target_lost),
        # A TLS write cut short cannot be resumed: owed a close, disconnected without one.
        client=Side(NOTHING, waited=False, skipped=True),
        target=Side(NOTHING, waited=False),
    ),
]


async def _watch(peer: trio.abc.Stream, *, masked: bool, seen: dict[str, object]) -> None:
    """Read what the relay sends to ``peer`` until EOF; never answer."""
    reader = FrameReader(from_client=masked, max_frame=1 << 20)
    while data := await peer.receive_some():
        reader.feed(data)
        while (frame := reader.next_frame()) is not None:
            assert not isinstance(frame, Violation)
            assert frame.opcode == CLOSE, "only a close is expected after the relay phase"
            close = parse_close_payload(frame.payload)
            seen["close"] = (close.code, close.reason)
    seen["closed_at"] = trio.current_time()


@pytest.mark.parametrize("row", TABLE, ids=[row.name for row in TABLE])
async def test_closing_table(row: Row, autojump_clock: trio.testing.MockClock) -> None:
    client_stream, client_peer = trio.testing.memory_stream_pair()
    target_stream, target_peer = trio.testing.memory_stream_pair()
    client = Hop("client", client_stream, is_target=False, max_message_size=1 << 20)
    target = Hop("target", target_stream, is_target=True, max_message_size=1 << 20)
    row.setup(client, target)
    seen: dict[str, dict[str, object]] = {"client": {}, "target": {}}
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _watch(client_peer, masked=False, seen=seen["client"]))
        nursery.start_soon(lambda: _watch(target_peer, masked=True, seen=seen["target"]))
        await end_relay(client, target, row.ending, GRACE)
    first = GRACE if row.frame_wait else 0.0
    for name, hop, expected in (("client", client, row.client), ("target", target, row.target)):
        got = seen[name]
        assert got.get("close", NOTHING) == expected.close, name
        assert got["closed_at"] == start + first + (GRACE if expected.waited else 0.0), name
        assert hop.close_was_skipped == expected.skipped, name
