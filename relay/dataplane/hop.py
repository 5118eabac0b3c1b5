"""One side of a relayed session: the relay's end of a WebSocket connection.

A hop owns its stream and its close state — whether a close went each way,
what code the close sent to it carried, whether the connection is lost, and
whether a frame can still be written (a send cut short by cancellation leaves
the stream mid-frame).  Everything that changes that state is a method here;
the pumps, the closing rules and the session only read it.
"""

from __future__ import annotations

import socket

import trio

from relay.dataplane.sockets import MAX_RECEIVE_SIZE, RECEIVE_SIZE, adopt_socket
from relay.dataplane.tls import TLSStream, TLSWire
from relay.wire.frames import (
    CLOSE,
    CloseFrame,
    FrameReader,
    FrameRelay,
    Violation,
    encode_close,
    encode_frame,
)
from relay.wire.mask import MASK_KEYS, MaskKeys

# The read sizes and adopt_socket are part of a hop's interface: callers that
# build hops (the listener, the dial, agent links) take them from here.
__all__ = ["MAX_RECEIVE_SIZE", "RECEIVE_SIZE", "Hop", "SendStalled", "adopt_socket"]

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class SendStalled(trio.BrokenResourceError):
    """The peer accepted no byte for ``send_stall_timeout`` while a write waited
    (a kind of broken connection: whoever catches that treats the peer as gone)."""


class Hop:
    """The client or the target, as the relay sees it."""

    __slots__ = (
        "close_received",
        "close_sent",
        "close_was_skipped",
        "closed",
        "drained",
        "incoming",
        "is_target",
        "keys",
        "lost",
        "name",
        "pending",
        "read_size",
        "send_broken",
        "sent_close_code",
        "sock",
        "stall_timeout",
        "stream",
        "tls",
        "unsent",
    )

    def __init__(
        self,
        name: str,
        stream: trio.abc.Stream,
        *,
        is_target: bool,
        max_message_size: int,
        pending: bytes = b"",
        sock: socket.socket | None = None,
        keys: MaskKeys | None = None,
        stall_timeout: float = 0.0,
    ) -> None:
        self.name = name
        self.stream = stream
        # Plain TCP: ``stream``'s own socket, called directly (see adopt_socket).
        self.sock = sock
        # TLS on a plain socket: the same direct path, through the TLS wire.
        self.tls: TLSWire | None = None
        if sock is None and type(stream) is TLSStream:
            self.sock, self.tls = stream.sock, stream.wire
        self.drained = False
        self.read_size = RECEIVE_SIZE
        # The relay is the client towards the target: its frames there are masked.
        self.is_target = is_target
        self.keys = keys if keys is not None else MASK_KEYS
        self.incoming = FrameRelay(
            from_client=not is_target, max_message_size=max_message_size, keys=self.keys
        )
        self.pending = pending
        self.close_received: CloseFrame | None = None
        self.close_sent = False
        self.sent_close_code: int | None = None  # what the close sent here said
        self.close_was_skipped = False  # owed a close, but a frame to it was left unfinished
        self.lost = False
        self.send_broken = False
        # What a cancelled send had still to write (plain TCP): the stream
        # stops mid-frame there, and flush() can still complete it.
        self.unsent = b""
        # > 0: a write that makes no progress for this long raises SendStalled.
        self.stall_timeout = stall_timeout
        self.closed = False

    # -- close state: every change goes through these ---------------------------

    def peer_closed(self, frame: CloseFrame) -> None:
        """The peer's close frame has been read from this hop."""
        self.close_received = frame

    def close_relayed(self, code: int | None) -> None:
        """The other side's close frame (with ``code``) has been written to this hop."""
        self.close_sent = True
        self.sent_close_code = code

    def close_skipped(self) -> None:
        """This side was owed a close but is disconnected without one: a frame
        to it could not be finished (logged and counted by the session)."""
        self.close_was_skipped = True

    def mark_lost(self) -> None:
        """The connection is gone (a send failed, or EOF was read)."""
        self.lost = True

    @property
    def can_send_close(self) -> bool:
        """Whether a close frame of the relay's own can still be written here."""
        return not (self.close_sent or self.lost or self.send_broken)

    # -- I/O -------------------------------------------------------------------

    async def receive(self) -> bytes | bytearray:
        """The next bytes from the peer; ``b""`` once the connection is gone."""
        data: bytes | bytearray
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        sock = self.sock
        if sock is None:
            try:
                data = await self.stream.receive_some(self.read_size)
            except _GONE:
                data = b""
        elif self.tls is not None:
            data = await self._tls_receive(sock, self.tls)
        else:
            # One scheduling point per read, where Trio's stream layers take
            # several; the wait (or the checkpoint) is where cancellation lands.
            # Awaits stay outside the except clauses: a task parked inside one
            # keeps the exception and its traceback alive for as long as it waits.
            ready: bytes | None = None
            # A short read drained the socket: trying again now would only
            # fail (a syscall and an exception), so wait straight away.
            if self.drained:
                self.drained = False
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    ready = sock.recv(self.read_size)
                except BlockingIOError:
                    pass
                except OSError:
                    ready = b""
            if ready is None:
                data = await self._wait_and_receive(sock)
            else:
                # Bytes taken from the kernel must reach the caller: the
                # scheduling point after the read cannot be cancelled (Trio's
                # own rule for its socket calls), the one before it can.
                data = ready
                await trio.lowlevel.cancel_shielded_checkpoint()
        if not data:
            self.mark_lost()
        size = len(data)
        self.drained = size < self.read_size
        # A busy stream (a full read) reads more at a time: fewer trips per
        # megabyte; a quiet one goes back to the small buffer.
        if not self.drained:
            self.read_size = min(self.read_size * 4, MAX_RECEIVE_SIZE)
        elif size < RECEIVE_SIZE // 2:
            self.read_size = RECEIVE_SIZE
        return data

    async def _tls_receive(self, sock: socket.socket, tls: TLSWire) -> bytes:
        # Every record a read completed comes back at once (one pump cycle per
        # read, not per 16 KiB record).  Ciphertext goes into the TLS wire as
        # soon as it is read, so a cancellation at a wait loses nothing.
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = self.read_size
        while True:
            data = tls.decrypt(limit)
            if data is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            try:
                received = sock.recv(MAX_RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                return b""
            tls.feed(received)

    async def _wait_and_receive(self, sock: socket.socket) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(self.read_size)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Write raw frame bytes; raises ``trio.BrokenResourceError`` if the peer is gone."""
        # Stays set if the send is cancelled part-way: the stream may then end
        # mid-frame and no further frame may be written to it.
        self.send_broken = True
        sock = self.sock
        if self.tls is not None:
            # Encrypted whole, then sent like plain bytes (a cut-short send
            # keeps its ciphertext for flush()).
            data = self.tls.encrypt(data)
        if sock is None:
            try:
                if self.stall_timeout:
                    # A stream's write shows no progress from outside: here the
                    # timeout bounds the whole write (docs: [server] send_stall_timeout).
                    with trio.move_on_after(self.stall_timeout) as waited:
                        await self.stream.send_all(data)
                    if waited.cancelled_caught:
                        raise SendStalled
                else:
                    await self.stream.send_all(data)
            except (trio.ClosedResourceError, OSError) as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
        else:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if sent < len(data):
                await self._send_rest(sock, memoryview(data)[sent:])
        self.send_broken = False

    async def _send_rest(self, sock: socket.socket, view: memoryview) -> None:
        stall = self.stall_timeout
        while view:
            try:
                if stall:
                    # Each byte the peer accepts restarts the clock.
                    with trio.move_on_after(stall) as waited:
                        await trio.lowlevel.wait_writable(sock)
                    if waited.cancelled_caught:
                        raise SendStalled
                else:
                    await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            except trio.Cancelled:
                # The peer has part of a frame: keep the rest for flush().
                self.unsent = bytes(view)
                raise
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    async def flush(self) -> None:
        """Write what a cancelled send left unsent, so a frame can follow again."""
        if self.unsent:
            data, self.unsent = self.unsent, b""
            sock = self.sock
            assert sock is not None  # only the direct path keeps unsent bytes
            # Already on the wire's terms (ciphertext on a TLS hop): sent as they are.
            self.send_broken = True
            await self._send_rest(sock, memoryview(data))
            self.send_broken = False

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """Write one frame originated by the relay (masked towards the target)."""
        mask = self.keys.next() if self.is_target else None
        await self.send_bytes(encode_frame(opcode, payload, mask=mask))

    async def send_close(self, code: int | None, reason: str = "") -> None:
        """Send the relay's own close frame, once."""
        if self.close_sent:
            return
        self.close_relayed(code)
        mask = self.keys.next() if self.is_target else None
        await self.send_bytes(encode_close(code, reason, mask=mask))

    async def await_close(self, reader: FrameReader) -> None:
        """Read and drop frames until the peer's close, a protocol error or EOF
        (where the relay is the endpoint: ``reader`` holds what came before)."""
        while True:
            frame = reader.next_frame()
            if frame is None:
                data = await self.receive()
                if not data:
                    return
                reader.feed(data)
            elif isinstance(frame, Violation) or frame.opcode == CLOSE:
                return

    async def linger(self) -> None:
        """Half-close, then read and drop until the peer closes its end.

        For a side disconnected without a close frame: closing a socket with
        unread input resets the connection, and a reset destroys what the peer
        has not read yet (the last messages relayed to it).  The caller bounds
        the wait.
        """
        try:
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_WR)
            elif isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            else:
                return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        while await self.receive():
            pass

    async def aclose(self) -> None:
        """Close the connection without waiting on the peer (the first call does)."""
        if self.closed:
            return
        self.closed = True
        stream = self.stream
        if type(stream) is trio.SocketStream:
            # All that SocketStream.aclose does, less its checkpoint: here that
            # would only raise and catch a Cancelled, twice per session.
            stream.socket.close()
        else:
            await trio.aclose_forcefully(stream)
