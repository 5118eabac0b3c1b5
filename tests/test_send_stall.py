"""[server] send_stall_timeout on the generic stream path (TLS, in-memory), under the
mock clock: a side that accepts no byte for that long while a write to it waits
ends the session; a slow side that keeps accepting does not."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.dataplane.closing import end_relay
from relay.dataplane.hop import Hop
from relay.dataplane.pumps import Ending, relay_frames
from relay.wire.closecodes import Outcome
from relay.wire.frames import (
    BINARY,
    CLOSE,
    Frame,
    FrameReader,
    encode_frame,
    parse_close_payload,
)

STALL = 10.0


def _hops(
    stall: float,
) -> tuple[Hop, Hop, trio.testing.MemoryStreamPair, trio.abc.Stream]:
    # The target end is lockstep: a write waits until the peer reads it.
    client_stream, client_peer = trio.testing.memory_stream_pair()
    target_stream, target_peer = trio.testing.lockstep_stream_pair()
    client = Hop("client", client_stream, is_target=False, max_message_size=1 << 20)
    target = Hop(
        "target", target_stream, is_target=True, max_message_size=1 << 20, stall_timeout=stall
    )
    return client, target, client_peer, target_peer  # type: ignore[return-value]


async def _close_seen(peer: trio.abc.Stream) -> tuple[int | None, str]:
    reader = FrameReader(from_client=False, max_frame=1 << 20)
    while data := await peer.receive_some():
        reader.feed(data)
        frame = reader.next_frame()
        if isinstance(frame, Frame) and frame.opcode == CLOSE:
            close = parse_close_payload(frame.payload)
            return close.code, close.reason
    raise AssertionError("no close")


async def test_a_target_that_takes_nothing_ends_the_session_after_the_stall_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, target, client_peer, _target_peer = _hops(STALL)
    await client_peer.send_all(encode_frame(BINARY, b"x" * 100, mask=b"abcd"))
    start = trio.current_time()
    ending = await relay_frames(client, target, idle_timeout=0.0, close_timeout=5.0)
    assert ending == Ending(Outcome.SEND_STALLED, "target stopped reading")
    assert trio.current_time() - start == pytest.approx(STALL)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(end_relay, client, target, ending, 5.0)
        assert await _close_seen(client_peer) == (1011, "target stopped reading")
    assert target.lost  # not sent a close it would not read


async def test_without_the_setting_a_write_waits_as_long_as_it_takes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, target, client_peer, _target_peer = _hops(0.0)
    await client_peer.send_all(encode_frame(BINARY, b"x" * 100, mask=b"abcd"))
    with trio.move_on_after(3600):
        await relay_frames(client, target, idle_timeout=0.0, close_timeout=5.0)
        raise AssertionError("the relay phase ended on its own")
    assert not target.lost


async def test_a_slow_reader_that_keeps_taking_bytes_is_not_stalled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On this path a whole write is timed: a reader that takes each write within
    the timeout, however slowly, is never cut off."""
    client, target, client_peer, target_peer = _hops(STALL)
    got = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay_frames(client, target, idle_timeout=0.0, close_timeout=5.0)
        )
        for _ in range(5):
            await client_peer.send_all(encode_frame(BINARY, b"y" * 100, mask=b"abcd"))
            await trio.sleep(STALL * 0.8)  # slow, but within the timeout each time
            got += len(await target_peer.receive_some())
        nursery.cancel_scope.cancel()
    assert got == 5 * len(encode_frame(BINARY, b"y" * 100, mask=b"abcd"))
    assert not target.lost
