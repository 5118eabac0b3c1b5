"""No byte lost to cancellation: each point where a read or a write can meet a
cancellation, hit exactly, on real loopback sockets (the plain-TCP path the
pumps take) or in-memory streams where the clock matters.

The relay phase is ended (as a shutdown, an idle timeout or the other pump
would end it) at the exact moment after a read, or while a send is part-way;
then the closing must still deliver every byte read, follow it with a
well-formed close, and find the peer's answer from the right offset — without
waiting out ``close_timeout``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing

from relay.dataplane.closing import end_relay, refuse
from relay.dataplane.hop import Hop
from relay.dataplane.pumps import Ending, RelayWatch, relay_frames
from relay.session import _read_connect_message
from relay.wire.closecodes import CloseCode, Outcome, SessionError
from relay.wire.frames import (
    BINARY,
    CLOSE,
    TEXT,
    Frame,
    FrameReader,
    Violation,
    encode_close,
    encode_frame,
    parse_close_payload,
)

GRACE = 30.0  # far above what any step takes: reaching it means an answer was missed
MASK = b"\x11\x22\x33\x44"


class TriggerSocket:
    """The relay's end of a connection, as the pumps call it (``recv``, ``send``,
    ``fileno``), calling ``after_read`` once right after a read returned bytes:
    the exact moment a cancellation used to lose them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.after_read: Callable[[], None] | None = None

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        hook, self.after_read = self.after_read, None
        if data and hook is not None:
            hook()
        return data

    def send(self, data: bytes | bytearray | memoryview) -> int:
        return self.sock.send(data)

    def fileno(self) -> int:
        return self.sock.fileno()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)


def _tcp_pair(*, small_buffers: bool = False) -> tuple[socket.socket, socket.socket]:
    """A real loopback TCP connection: (the relay's end, the peer's end).

    ``small_buffers``: 4 KiB socket buffers, set before the connection opens (a
    receive window already advertised cannot shrink), so a write of tens of
    KiB cannot complete until the peer reads.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        peer = socket.socket()
        if small_buffers:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(server.getsockname())
        ours, _ = server.accept()
    ours.setblocking(False)
    return ours, peer


def _hop(name: str, sock: socket.socket, *, is_target: bool) -> tuple[Hop, TriggerSocket]:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    trigger = TriggerSocket(sock)
    hop = Hop(
        name,
        stream,
        is_target=is_target,
        max_message_size=1 << 24,
        sock=trigger,  # type: ignore[arg-type]
    )
    return hop, trigger


class Peer:
    """The far end of a hop: reads whole frames, answers a close with the same code."""

    def __init__(self, sock: socket.socket, *, is_client: bool) -> None:
        sock.setblocking(False)
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.is_client = is_client  # a client peer masks what it sends
        self.reader = FrameReader(from_client=not is_client, max_frame=1 << 24)
        self.frames: list[Frame] = []
        self.violations: list[Violation] = []

    async def send(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(
            encode_frame(opcode, payload, mask=MASK if self.is_client else None)
        )

    async def read_to_close(self) -> None:
        """Collect frames until the relay's close, answer it, then read to EOF."""
        answered = False
        while True:
            frame = self.reader.next_frame()
            if frame is None:
                data = await self.stream.receive_some()
                if not data:
                    await self.stream.aclose()  # as a client does at EOF
                    return
                self.reader.feed(data)
                continue
            if isinstance(frame, Violation):
                self.violations.append(frame)
                return
            self.frames.append(frame)
            if frame.opcode == CLOSE and not answered:
                answered = True
                code = parse_close_payload(frame.payload).code
                await self.stream.send_all(
                    encode_close(code, "", mask=MASK if self.is_client else None)
                )

    def data(self) -> list[bytes]:
        return [f.payload for f in self.frames if f.opcode != CLOSE]

    def close_code(self) -> int | None:
        closes = [f for f in self.frames if f.opcode == CLOSE]
        assert len(closes) == 1, self.frames
        return parse_close_payload(closes[0].payload).code


async def _relay_then_close(
    client: Hop, target: Hop, arm: Callable[[RelayWatch], None]
) -> Ending | None:
    """Run the relay phase (``arm`` sets the trap once it starts), then the closing."""
    ending = await relay_frames(client, target, idle_timeout=0.0, close_timeout=GRACE, on_start=arm)
    await end_relay(client, target, ending, GRACE)
    return ending


@pytest.mark.parametrize("source", ["target", "client"])
async def test_a_read_cut_by_cancellation_is_still_relayed(source: str) -> None:
    """The relay phase ends right after a read took bytes from the kernel: they are
    relayed, then each side gets the 1001 and its answer is found at once."""
    client_sock, client_peer_sock = _tcp_pair()
    target_sock, target_peer_sock = _tcp_pair()
    client, client_trigger = _hop("client", client_sock, is_target=False)
    target, target_trigger = _hop("target", target_sock, is_target=True)
    client_peer = Peer(client_peer_sock, is_client=True)
    target_peer = Peer(target_peer_sock, is_client=False)
    sender, receiver, trap = (
        (target_peer, client_peer, target_trigger)
        if source == "target"
        else (client_peer, target_peer, client_trigger)
    )

    def arm(watch: RelayWatch) -> None:
        trap.after_read = lambda: watch.finish(Ending(Outcome.SHUTDOWN))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_peer.read_to_close)
        nursery.start_soon(target_peer.read_to_close)
        await sender.send(TEXT, b"first")
        await sender.send(BINARY, bytes(range(256)) * 40)
        ending = await _relay_then_close(client, target, arm)
    assert ending == Ending(Outcome.SHUTDOWN)
    assert receiver.data() == [b"first", bytes(range(256)) * 40]
    assert not receiver.violations
    assert not sender.violations
    assert (client_peer.close_code(), target_peer.close_code()) == (1001, 1001)
    # Both answers were read: neither side was waited on for GRACE.
    assert client.close_received is not None
    assert target.close_received is not None
    assert trio.current_time() - start < GRACE


async def test_a_send_cut_short_is_finished_before_the_close() -> None:
    """A frame the client is slow to take is part-written when the relay phase ends:
    the rest is written first, then the 1001 (not a bare disconnect)."""
    # Small buffers, so a 60 KiB frame cannot go out in one send.
    client_sock, client_peer_sock = _tcp_pair(small_buffers=True)
    target_sock, target_peer_sock = _tcp_pair()
    client, _client_trigger = _hop("client", client_sock, is_target=False)
    target, _target_trigger = _hop("target", target_sock, is_target=True)
    client_peer = Peer(client_peer_sock, is_client=True)
    target_peer = Peer(target_peer_sock, is_client=False)
    payload = b"p" * (60 * 1024)  # under 64 KiB: held whole, then sent in one call
    watches: list[RelayWatch] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(target_peer.read_to_close)
        nursery.start_soon(_relay_then_close, client, target, lambda watch: watches.append(watch))
        await target_peer.send(BINARY, payload)
        # Wait (for state, not time) until the send to the client is stuck part-way.
        while not client.send_broken:  # noqa: ASYNC110
            await trio.sleep(0.001)
        watches[0].finish(Ending(Outcome.SHUTDOWN))
        await trio.testing.wait_all_tasks_blocked()
        # Only now does the client read: the rest of the frame was kept, not dropped.
        nursery.start_soon(client_peer.read_to_close)
    assert client_peer.data() == [payload]
    assert client_peer.close_code() == CloseCode.GOING_AWAY
    assert not client.close_was_skipped


async def test_a_streamed_frame_in_flight_is_finished_then_1001_both_ways() -> None:
    """Frames over 64 KiB streaming in both directions when the relay phase ends (a
    drain deadline): each is relayed to its end as its bytes arrive, then 1001."""
    client_sock, client_peer_sock = _tcp_pair()
    target_sock, target_peer_sock = _tcp_pair()
    client, _client_trigger = _hop("client", client_sock, is_target=False)
    target, _target_trigger = _hop("target", target_sock, is_target=True)
    client_peer = Peer(client_peer_sock, is_client=True)
    target_peer = Peer(target_peer_sock, is_client=False)
    up = bytes(range(256)) * 4096  # 1 MiB each way
    down = bytes(reversed(range(256))) * 4096
    up_frame = encode_frame(BINARY, up, mask=MASK)
    down_frame = encode_frame(BINARY, down)
    watches: list[RelayWatch] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_peer.read_to_close)
        nursery.start_soon(target_peer.read_to_close)
        nursery.start_soon(_relay_then_close, client, target, lambda watch: watches.append(watch))
        await client_peer.stream.send_all(up_frame[:300_000])
        await target_peer.stream.send_all(down_frame[:300_000])
        while not (client.incoming.mid_frame and target.incoming.mid_frame):  # noqa: ASYNC110
            await trio.sleep(0.001)
        watches[0].finish(Ending(Outcome.SHUTDOWN))
        await trio.testing.wait_all_tasks_blocked()
        # The rest arrives only after the relay phase has ended.
        await client_peer.stream.send_all(up_frame[300_000:])
        await target_peer.stream.send_all(down_frame[300_000:])
    assert target_peer.data() == [up]
    assert client_peer.data() == [down]
    assert (client_peer.close_code(), target_peer.close_code()) == (1001, 1001)
    assert client.close_received is not None
    assert target.close_received is not None


async def test_a_streamed_frame_whose_sender_died_leaves_no_close_and_is_counted() -> None:
    """The one case without a close frame: a frame over 64 KiB whose sender is gone
    mid-frame cannot be finished; the receiver is disconnected, and that is recorded."""
    client_sock, client_peer_sock = _tcp_pair()
    target_sock, target_peer_sock = _tcp_pair()
    client, _client_trigger = _hop("client", client_sock, is_target=False)
    target, _target_trigger = _hop("target", target_sock, is_target=True)
    client_peer = Peer(client_peer_sock, is_client=True)
    down_frame = encode_frame(BINARY, bytes(1 << 20))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_peer.read_to_close)
        nursery.start_soon(_relay_then_close, client, target, lambda watch: None)
        target_peer_sock.sendall(down_frame[:200_000])
        while not target.incoming.mid_frame:  # noqa: ASYNC110
            await trio.sleep(0.001)
        target_peer_sock.close()
    assert client_peer.frames == []  # half a frame arrived, never a close after it
    assert client.close_was_skipped


async def test_a_cancelled_connect_message_read_keeps_its_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connect deadline cancels the read of a half-sent connect message: the
    bytes stay with the hop, so the refusal finds the client's close answer from
    the right offset, at once, instead of waiting ``close_timeout``."""
    ours, theirs = trio.testing.memory_stream_pair()
    client = Hop("client", ours, is_target=False, max_message_size=1 << 20)
    message = encode_frame(TEXT, b'{"apiKey": "k", "url": "ws://h/"}', mask=MASK)
    await theirs.send_all(message[:10])
    with trio.move_on_after(10):
        await _read_connect_message(client, 4096)
    assert client.pending == message[:10]
    # The client finishes its frame, then answers the refusal's close.
    await theirs.send_all(message[10:] + encode_close(1008, "", mask=MASK))
    error = SessionError(Outcome.CONNECT_TIMEOUT, "No connect message within 10 seconds")
    start = trio.current_time()
    await refuse(client, error, "refused", grace=5.0)
    assert trio.current_time() == start  # the answer was found, not waited for
    assert client.close_received is not None
    assert client.close_received.code == 1008
