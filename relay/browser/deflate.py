"""permessage-deflate from a target, inflated for a client that negotiated none.

Chrome offers ``permessage-deflate; client_max_window_bits`` on every
WebSocket; a dial that looks like Chrome offers it too.  The client's own
handshake with the gateway negotiated no extension, so a target's compressed
messages (RSV1 set, RFC 7692) must reach the client inflated:

- :func:`parse_agreement` checks the target's ``Sec-WebSocket-Extensions``
  answer (one ``permessage-deflate`` with valid parameters, or a refusal);
- :class:`Inflater` (no I/O) turns the target's byte stream into the same
  frames with compressed messages inflated: control frames and uncompressed
  messages pass through byte for byte (large frames streamed as they come);
  a compressed message is inflated as its bytes arrive and sent on as
  fragments of at most :data:`CHUNK` bytes (the extension's end point may
  re-fragment), so no message is ever held whole;
- :class:`InflatingStream` applies it to a stream's reads.

The relay's own frames to the target stay uncompressed (RSV1 clear), which
RFC 7692 section 6 allows whatever was agreed.
"""

from __future__ import annotations

import zlib

import attrs
import trio

from relay.wire.frames import FIN, MASK_BIT, parse_header

__all__ = ["CHUNK", "Agreement", "InflateError", "Inflater", "InflatingStream", "parse_agreement"]

CHUNK = 64 * 1024  # inflated bytes per fragment sent on
_RSV1 = 0x40
_TAIL = b"\x00\x00\xff\xff"  # removed by the sender from every compressed message


class InflateError(Exception):
    """The target's compressed data could not be inflated."""


@attrs.frozen
class Agreement:
    """What the target accepted: its window and whether it resets its context per message."""

    server_no_context_takeover: bool = False
    server_max_window_bits: int = 15


def _bits(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def parse_agreement(value: bytes) -> Agreement | None:
    """The target's answer to the offer; None when it is not a valid acceptance."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "," in text:
        return None  # one extension was offered: more cannot be accepted
    name, *params = (part.strip() for part in text.split(";"))
    if name.lower() != "permessage-deflate":
        return None
    seen: set[str] = set()
    no_takeover = False
    window = 15
    for param in params:
        key, sep, raw = param.partition("=")
        key = key.strip().lower()
        raw_value = raw.strip().strip('"') if sep else None
        if key in seen:
            return None
        seen.add(key)
        if key == "server_no_context_takeover" and raw_value is None:
            no_takeover = True
        elif key == "client_no_context_takeover" and raw_value is None:
            pass  # the relay sends nothing compressed
        elif key == "server_max_window_bits":
            bits = _bits(raw_value)
            if bits is None:
                return None
            window = bits
        elif key == "client_max_window_bits":
            if _bits(raw_value) is None:
                return None
        else:
            return None
    return Agreement(no_takeover, window)


def _header_size(b1: int) -> int:
    length = b1 & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + 4 if b1 & MASK_BIT else size


def _frame_head(b0: int, length: int) -> bytes:
    if length < 126:
        return bytes((b0, length))
    if length < 1 << 16:
        return bytes((b0, 126)) + length.to_bytes(2, "big")
    return bytes((b0, 127)) + length.to_bytes(8, "big")


class Inflater:
    """The target's bytes in, the client's bytes out (compressed messages inflated)."""

    def __init__(self, agreement: Agreement) -> None:
        self._agreement = agreement
        self._window = agreement.server_max_window_bits
        self._zlib = zlib.decompressobj(-self._window)
        self._buf = bytearray()
        self._raw_left = 0  # payload bytes of a passed-through frame still to come
        self._inflate_left = 0  # payload bytes of a compressed frame still to come
        self._frame_fin = False  # the compressed frame being read ends its message
        self._compressed = False  # the data message in progress is compressed
        self._opcode = 0  # the compressed message's opcode, until its first fragment is out
        self._held = b""  # inflated bytes not yet sent on (less than CHUNK)

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Bytes for the client from ``data``; raises :class:`InflateError`."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        end = len(buf)
        while pos < end:
            if self._raw_left:
                n = min(self._raw_left, end - pos)
                out.append(bytes(buf[pos : pos + n]))
                self._raw_left -= n
                pos += n
                continue
            if self._inflate_left:
                n = min(self._inflate_left, end - pos)
                self._inflate_left -= n
                self._inflate(bytes(buf[pos : pos + n]), out)
                pos += n
                if not self._inflate_left:
                    self._frame_end(out)
                continue
            header = parse_header(buf, pos, end)
            if header is None:
                break
            b0, b1, length = header
            opcode = b0 & 0x0F
            hsize = _header_size(b1)
            if opcode == 0 and self._compressed and not b0 & _RSV1 and not b1 & MASK_BIT:
                compressed = True
            elif opcode in (1, 2) and b0 & _RSV1 and not b1 & MASK_BIT:
                self._compressed = compressed = True
                self._opcode = opcode
            else:
                if opcode in (1, 2):
                    self._compressed = False
                compressed = False
            if not compressed:
                # As it came: the pumps judge it (a masked or odd frame is theirs to refuse).
                out.append(bytes(buf[pos : pos + hsize]))
                self._raw_left = length
                pos += hsize
                continue
            self._frame_fin = bool(b0 & FIN)
            self._inflate_left = length
            pos += hsize
            if not length:
                self._frame_end(out)
        del buf[:pos]
        return b"".join(out)

    def _inflate(self, data: bytes, out: list[bytes]) -> None:
        try:
            produced = self._zlib.decompress(data, CHUNK)
            while True:
                self._hold(produced, out)
                tail = self._zlib.unconsumed_tail
                if not tail:
                    return
                produced = self._zlib.decompress(tail, CHUNK)
        except zlib.error as exc:
            raise InflateError(f"target sent data that does not inflate: {exc}") from None

    def _hold(self, produced: bytes, out: list[bytes]) -> None:
        held = self._held + produced
        while len(held) >= CHUNK:
            self._send(held[:CHUNK], False, out)
            held = held[CHUNK:]
        self._held = held

    def _send(self, payload: bytes, fin: bool, out: list[bytes]) -> None:
        opcode, self._opcode = self._opcode, 0  # later fragments are continuations
        out.append(_frame_head((FIN if fin else 0) | opcode, len(payload)) + payload)

    def _frame_end(self, out: list[bytes]) -> None:
        if not self._frame_fin:
            return
        self._inflate(_TAIL, out)
        self._send(self._held, True, out)
        self._held = b""
        self._compressed = False
        if self._agreement.server_no_context_takeover:
            self._zlib = zlib.decompressobj(-self._window)


class InflatingStream(trio.abc.Stream):
    """A target stream whose reads come out with compressed messages inflated."""

    def __init__(self, stream: trio.abc.Stream, agreement: Agreement, pending: bytes) -> None:
        self._stream = stream
        self._inflater = Inflater(agreement)
        self._pending = pending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Frames to the target, as they are (uncompressed)."""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the underlying stream."""
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes for the client; ``b""`` at the end of the target's stream."""
        while True:
            if self._pending:
                data, self._pending = self._pending, b""
                await trio.lowlevel.checkpoint()
            else:
                data = bytes(await self._stream.receive_some(max_bytes))
            if not data:
                return b""
            try:
                out = self._inflater.feed(data)
            except InflateError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            if out:
                return out

    async def aclose(self) -> None:
        """Close the target stream."""
        await self._stream.aclose()
