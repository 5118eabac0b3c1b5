"""One side of a relayed session: the relay's end of a WebSocket connection.

A hop owns its stream and remembers what the close handshake and the session's
end need to know: whether a close went each way, and whether a frame can still
be written (a send cut short by cancellation leaves the stream mid-frame).
"""

from __future__ import annotations

import trio

from relay.frames import (
    CloseFrame,
    FrameRelay,
    MaskKeys,
    encode_close,
    encode_frame,
)

__all__ = ["RECEIVE_SIZE", "Hop"]

RECEIVE_SIZE = 64 * 1024

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Hop:
    """The client or the target, as the relay sees it."""

    __slots__ = (
        "bytes_in",
        "close_received",
        "close_sent",
        "incoming",
        "is_target",
        "keys",
        "lost",
        "name",
        "pending",
        "send_broken",
        "stream",
    )

    def __init__(
        self,
        name: str,
        stream: trio.abc.Stream,
        *,
        is_target: bool,
        max_message_size: int,
        pending: bytes = b"",
        keys: MaskKeys | None = None,
    ) -> None:
        self.name = name
        self.stream = stream
        # The relay is the client towards the target: its frames there are masked.
        self.is_target = is_target
        self.keys = keys if keys is not None else MaskKeys()
        self.incoming = FrameRelay(
            from_client=not is_target, max_message_size=max_message_size, keys=self.keys
        )
        self.pending = pending
        self.close_received: CloseFrame | None = None
        self.close_sent = False
        self.lost = False
        self.send_broken = False
        self.bytes_in = 0

    async def receive(self) -> bytes | bytearray:
        """The next bytes from the peer; ``b""`` once the connection is gone."""
        data: bytes | bytearray
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except _GONE:
            data = b""
        if not data:
            self.lost = True
        self.bytes_in += len(data)
        return data

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Write raw frame bytes; raises ``trio.BrokenResourceError`` if the peer is gone."""
        # Stays set if the send is cancelled part-way: the stream may then end
        # mid-frame and no further frame may be written to it.
        self.send_broken = True
        try:
            await self.stream.send_all(data)
        except (trio.ClosedResourceError, OSError) as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        self.send_broken = False

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """Write one frame originated by the relay (masked towards the target)."""
        mask = self.keys.next() if self.is_target else None
        await self.send_bytes(encode_frame(opcode, payload, mask=mask))

    async def send_close(self, code: int | None, reason: str = "") -> None:
        """Send the relay's own close frame, once."""
        if self.close_sent:
            return
        self.close_sent = True
        mask = self.keys.next() if self.is_target else None
        await self.send_bytes(encode_close(code, reason, mask=mask))

    async def aclose(self) -> None:
        """Close the connection without waiting on the peer."""
        await trio.aclose_forcefully(self.stream)
