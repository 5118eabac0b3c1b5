"""Sans-I/O WebSocket frame codec (RFC 6455 section 5) for the relay's data plane.

Two consumers:

* :class:`FrameRelay` walks a byte stream one direction of a relayed session,
  reading only frame headers.  Server frames pass through untouched; client
  frames are re-masked in place with a fresh key.  It reports what the session
  must act on: data seen (idle timer), a close frame, a size or protocol
  violation.  Protocol questions the receiving endpoint can judge itself
  (reserved opcodes and bits, UTF-8, close codes) are left to that endpoint, so
  the relay is as transparent as a TCP proxy that knows where frames end.
* :class:`FrameReader` assembles whole frames, for the few places where the
  relay itself is the endpoint (the connect message, close replies).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import attrs

from relay.wire.closecodes import CloseCode
from relay.wire.mask import MASK_KEYS, MaskKeys, xor_bytes, xor_region

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "Chunk",
    "CloseFrame",
    "Frame",
    "FrameReader",
    "FrameRelay",
    "Violation",
    "encode_close",
    "encode_frame",
    "parse_close_payload",
]

CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

FIN = 0x80
MASK_BIT = 0x80
MAX_CONTROL_PAYLOAD = 125
# Frames up to this size are forwarded only once complete, so a session that
# must end mid-stream can still send a well-formed close frame after them.
HOLD_LIMIT = 64 * 1024
# Payloads up to this size are re-masked in one batched pass per read; larger
# ones by the C XOR, where a call's overhead is worth paying.
_BATCH_PAYLOAD = 1024
_ZEROS = bytes(14)  # the most header bytes between two masked payloads


def _xor_keystream(buf: bytearray, start: int, end: int, parts: list[bytes]) -> None:
    """XOR ``buf[start:end]`` with the concatenated ``parts``, in one big-integer pass."""
    stream = b"".join(parts)
    value = int.from_bytes(buf[start:end], "little") ^ int.from_bytes(stream, "little")
    buf[start:end] = value.to_bytes(end - start, "little")


_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


@attrs.frozen
class CloseFrame:
    """A close frame seen in the stream: ``code`` is None for an empty payload."""

    code: int | None
    reason: str
    payload: bytes


@attrs.frozen
class Violation:
    """The peer broke a rule the relay enforces itself: a protocol error or a
    message over the size limit."""

    code: CloseCode
    reason: str


class Chunk(NamedTuple):
    """What one :meth:`FrameRelay.feed` call produced (a tuple: built once per read).

    ``out`` goes to the other side before anything else happens; ``stop``, when
    set, ends this direction (no further bytes are accepted from the peer).
    """

    out: bytes | bytearray | memoryview
    data_seen: bool
    stop: CloseFrame | Violation | None = None


@attrs.frozen
class Frame:
    """A whole frame, payload unmasked."""

    opcode: int
    fin: bool
    payload: bytes


def _header_length(b1: int) -> int:
    length = b1 & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + 4 if b1 & MASK_BIT else size


def parse_header(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int, int] | None:
    """Return ``(first_byte, second_byte, payload_length)`` of the frame at
    ``pos``, or None while its header is incomplete.

    A 64-bit length with its top bit set is returned as is; callers treat any
    length over their limit as a violation.
    """
    if end - pos < 2:
        return None
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    if length == 126:
        if end - pos < 4:
            return None
        length = _U16.unpack_from(buf, pos + 2)[0]
    elif length == 127:
        if end - pos < 10:
            return None
        length = _U64.unpack_from(buf, pos + 2)[0]
    if end - pos < _header_length(b1):
        return None
    return buf[pos], b1, length


def encode_frame(
    opcode: int, payload: bytes, *, mask: bytes | None = None, fin: bool = True
) -> bytes:
    """Encode one frame; ``mask`` (4 bytes) for frames sent in the client role."""
    length = len(payload)
    head = bytearray([(FIN if fin else 0) | opcode])
    mask_bit = MASK_BIT if mask is not None else 0
    if length < 126:
        head.append(mask_bit | length)
    elif length < 1 << 16:
        head.append(mask_bit | 126)
        head += _U16.pack(length)
    else:
        head.append(mask_bit | 127)
        head += _U64.pack(length)
    if mask is None:
        return bytes(head) + payload
    head += mask
    body = bytearray(payload)
    xor_region(body, 0, length, mask, 0)
    return bytes(head + body)


def encode_close(code: int | None, reason: str = "", *, mask: bytes | None = None) -> bytes:
    """Encode a close frame; ``code=None`` sends an empty payload."""
    if code is None:
        payload = b""
    else:
        raw = reason.encode("utf-8")
        # A close payload is limited to 125 bytes; cut the reason, never the code,
        # on a character boundary.
        while len(raw) > MAX_CONTROL_PAYLOAD - 2:
            reason = reason[:-1]
            raw = reason.encode("utf-8")
        payload = _U16.pack(code) + raw
    return encode_frame(CLOSE, payload, mask=mask)


def parse_close_payload(payload: bytes) -> CloseFrame:
    """Read code and reason from a close payload; undecodable reasons are replaced."""
    if len(payload) < 2:
        return CloseFrame(None, "", payload)
    code = _U16.unpack_from(payload)[0]
    reason = payload[2:].decode("utf-8", errors="replace")
    return CloseFrame(code, reason, payload)


class FrameRelay:
    """One direction of a relayed session, as a state machine over raw bytes.

    ``from_client=True``: input frames must be masked and are re-masked with a
    fresh key (``new_key = old_key ^ r``, payload ``^= r``: one XOR pass).
    ``from_client=False``: input frames must be unmasked and pass untouched.
    """

    __slots__ = (
        "_carry",
        "_from_client",
        "_hold_limit",
        "_keys",
        "_max_message",
        "_message_size",
        "_phase",
        "_remaining",
        "_remask_on",
        "_skipping",
        "_stream_key",
        "_streaming_data",
        "broken",
        "forwarded",
        "frames",
    )

    def __init__(
        self,
        *,
        from_client: bool,
        max_message_size: int,
        hold_limit: int = HOLD_LIMIT,
        keys: MaskKeys | None = None,
    ) -> None:
        self._from_client = from_client
        self._remask_on = from_client
        self._skipping = False  # the rest of a refused frame is being discarded
        # Set by a protocol violation: the rest of the stream cannot be framed.
        self.broken = False
        self._max_message = max_message_size
        self._hold_limit = hold_limit
        self._keys = keys if keys is not None else MASK_KEYS
        self._carry = b""
        self._message_size = 0
        self._remaining = 0  # payload bytes still to come of a frame being streamed
        self._stream_key = b""
        self._phase = 0
        self._streaming_data = False
        self.frames = 0  # frames forwarded (headers seen), for metrics
        self.forwarded = 0  # bytes forwarded, for metrics

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has been forwarded and the rest has not."""
        return self._remaining > 0 and not self._skipping

    @property
    def frame_rest(self) -> int:
        """Payload bytes of the frame being streamed still to come (0 at a frame boundary)."""
        return 0 if self._skipping else self._remaining

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of their frame."""
        return len(self._carry)

    def feed(self, data: bytes | bytearray | memoryview) -> Chunk:
        """Process bytes received from the peer; see :class:`Chunk`."""
        remask = self._remask_on
        if remask and self._remaining >= len(data) and not self._carry:
            return self._stream_on(data)
        buf: bytes | bytearray | memoryview
        if self._carry:
            buf = bytearray(self._carry) + data if remask else self._carry + bytes(data)
            self._carry = b""
        else:
            buf = bytearray(data) if remask else data
        end = len(buf)
        pos = 0  # bytes consumed
        out_end = 0  # bytes to forward (all consumed ones, unless a frame is refused)
        data_seen = False
        stop: CloseFrame | Violation | None = None
        from_client = self._from_client
        max_message = self._max_message

        if self._remaining:
            n = min(self._remaining, end)
            if remask:
                xor_region(buf, 0, n, self._stream_key, self._phase)  # type: ignore[arg-type]
                self._phase = (self._phase + n) & 3
            self._remaining -= n
            pos = out_end = n
            data_seen = self._streaming_data
        # Small payloads are re-masked together: their keystream parts are
        # collected for buf[ks_start:ks_pos] and XORed in one pass at the end.
        ks: list[bytes] | None = [] if remask else None
        ks_start = ks_pos = pos

        frames = 0
        # Header parsing is inlined: it runs once per frame on the hot path.
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hsize = 2
            if length >= 126:
                if length == 126:
                    hsize = 4
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                else:
                    hsize = 10
                    if end - pos < 10:
                        break
                    length = _U64.unpack_from(buf, pos + 2)[0]
            if b1 & MASK_BIT:
                hsize += 4
                if not from_client:
                    stop = self._break(CloseCode.PROTOCOL_ERROR, "frame from server masked")
                    break
            elif from_client:
                stop = self._break(CloseCode.PROTOCOL_ERROR, "frame from client not masked")
                break
            if end - pos < hsize:
                break
            opcode = b0 & 0x0F
            frame_end = pos + hsize + length
            if opcode >= CLOSE:
                if length > MAX_CONTROL_PAYLOAD or not b0 & FIN:
                    stop = self._break(
                        CloseCode.PROTOCOL_ERROR, "control frame fragmented or over 125 bytes"
                    )
                    break
            else:
                total = self._message_size + length if opcode == CONTINUATION else length
                if total > max_message:
                    # Refuse this frame but keep the stream readable, so the
                    # peer's answer to the 1009 close can still be found.
                    stop = Violation(CloseCode.MESSAGE_TOO_BIG, f"message over {max_message} bytes")
                    self._message_size = 0
                    self._remaining = max(0, frame_end - end)
                    self._skipping = True
                    self._streaming_data = False
                    self._remask_on = False
                    pos = min(frame_end, end)
                    break
                if opcode <= BINARY:
                    self._message_size = 0 if b0 & FIN else total
                    data_seen = True
            if frame_end <= end:
                if opcode == CLOSE:
                    stop = self._close_from(buf, frame_end - length, frame_end)
                if ks is not None:
                    # The key k becomes k ^ r and the payload is XORed with r:
                    # it then reads the same under the new key.
                    r = self._keys.next()
                    key_at = frame_end - length - 4
                    if key_at > ks_pos:
                        ks.append(_ZEROS[: key_at - ks_pos])
                    if length <= _BATCH_PAYLOAD:
                        ks.append((r * ((length >> 2) + 2))[: length + 4])
                    else:
                        ks.append(r)
                        _xor_keystream(buf, ks_start, key_at + 4, ks)  # type: ignore[arg-type]
                        xor_region(buf, key_at + 4, frame_end, r, 0)  # type: ignore[arg-type]
                        ks = []
                        ks_start = frame_end
                    ks_pos = frame_end
                frames += 1
                pos = out_end = frame_end
                if stop is not None:
                    break
                continue
            if hsize + length <= self._hold_limit:
                break  # hold the incomplete frame until it is whole
            # A large frame: forward what is here now, the rest as it arrives.
            if ks is not None:
                r = self._stream_key = self._keys.next()
                key_at = pos + hsize - 4
                if key_at > ks_pos:
                    ks.append(_ZEROS[: key_at - ks_pos])
                ks.append(r)
                _xor_keystream(buf, ks_start, key_at + 4, ks)  # type: ignore[arg-type]
                xor_region(buf, key_at + 4, end, r, 0)  # type: ignore[arg-type]
                ks = []
                ks_start = ks_pos = end
                self._phase = (end - key_at - 4) & 3
            self._remaining = frame_end - end
            self._streaming_data = opcode <= BINARY
            frames += 1
            pos = out_end = end

        if ks:
            _xor_keystream(buf, ks_start, ks_pos, ks)  # type: ignore[arg-type]
        self.frames += frames
        self.forwarded += out_end
        if pos < end and not self.broken and not isinstance(stop, CloseFrame):
            self._carry = bytes(buf[pos:])
        if out_end == end:
            return Chunk(buf, data_seen, stop)
        return Chunk(memoryview(buf)[:out_end], data_seen, stop)

    def _stream_on(self, data: bytes | bytearray | memoryview) -> Chunk:
        """A read that is all payload of a frame being streamed: one C XOR pass
        from the received bytes, where the general path copies them three times."""
        n = len(data)
        key, phase = self._stream_key, self._phase
        if phase:
            key = key[phase:] + key[:phase]
        self._phase = (phase + n) & 3
        self._remaining -= n
        self.forwarded += n
        return Chunk(xor_bytes(data, key), self._streaming_data)

    def _break(self, code: CloseCode, reason: str) -> Violation:
        self.broken = True
        return Violation(code, reason)

    def drain(self) -> None:
        """Stop relaying: from now on only a close frame matters, so no size
        limit applies and nothing is re-masked."""
        self._max_message = 1 << 64
        self._remask_on = False

    def _close_from(self, buf: bytes | bytearray | memoryview, start: int, end: int) -> CloseFrame:
        payload = bytearray(buf[start:end])
        if self._from_client:
            xor_region(payload, 0, len(payload), bytes(buf[start - 4 : start]), 0)
        return parse_close_payload(bytes(payload))


class FrameReader:
    """Assembles whole frames from a byte stream (the relay as an endpoint)."""

    __slots__ = ("_buf", "_from_client", "_max_frame")

    def __init__(self, *, from_client: bool, max_frame: int) -> None:
        self._from_client = from_client
        self._max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        self._buf += data

    def take_buffered(self) -> bytes:
        """Hand over bytes not yet consumed (they start at a frame boundary)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def next_frame(self) -> Frame | Violation | None:
        """The next whole frame, a violation, or None when more bytes are needed."""
        buf = self._buf
        header = parse_header(buf, 0, len(buf))
        if header is None:
            return None
        b0, b1, length = header
        opcode = b0 & 0x0F
        if bool(b1 & MASK_BIT) != self._from_client:
            return Violation(CloseCode.PROTOCOL_ERROR, "frame not masked as its role requires")
        if opcode >= CLOSE and (length > MAX_CONTROL_PAYLOAD or not b0 & FIN):
            return Violation(CloseCode.PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
        if length > self._max_frame:
            return Violation(CloseCode.MESSAGE_TOO_BIG, f"frame over {self._max_frame} bytes")
        hsize = _header_length(b1)
        if len(buf) < hsize + length:
            return None
        payload = bytearray(buf[hsize : hsize + length])
        if self._from_client:
            xor_region(payload, 0, length, bytes(buf[hsize - 4 : hsize]), 0)
        del buf[: hsize + length]
        return Frame(opcode, bool(b0 & FIN), bytes(payload))
