"""The minimum of RFC 6455 the load generator and the echo target need.

Deliberately not a general WebSocket library: frames are pre-encoded once per run,
incoming frames are scanned header by header, and payloads are only touched where
the protocol forces it (the echo target must unmask what it echoes).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable

__all__ = [
    "BINARY",
    "CLOSE",
    "PING",
    "PONG",
    "TEXT",
    "accept_key",
    "apply_mask",
    "client_request",
    "encode_frame",
    "frame_header",
    "parse_header",
    "server_response",
]

CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    # One big-integer XOR runs at C speed; only used when websockets' C helper is absent.
    n = len(data)
    stream = (mask * ((n >> 2) + 1))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")
    return value.to_bytes(n, "little")


def _load_apply_mask() -> Callable[[bytes | bytearray | memoryview, bytes], bytes]:
    try:
        from websockets.speedups import apply_mask as fast
    except ImportError:
        return _apply_mask_py
    return fast


apply_mask = _load_apply_mask()


def accept_key(key: bytes | str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    raw = key.encode() if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw.strip() + _GUID).digest()).decode()


def client_request(host: str, path: str) -> tuple[bytes, str]:
    """An upgrade request and the accept value the server must answer with."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()
    return request, accept_key(key)


def server_response(request_head: bytes) -> bytes | None:
    """The 101 answer to an upgrade request head, or None when it is not one."""
    key = None
    for line in request_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        return None
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
        "\r\n"
    ).encode()


def frame_header(first: int, length: int, mask: bytes | None = None) -> bytes:
    """Header bytes for a frame whose first byte (FIN/RSV/opcode) is ``first``."""
    bit = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    return head + mask if mask is not None else head


def encode_frame(opcode: int, payload: bytes, *, masked: bool, fin: bool = True) -> bytes:
    """One complete frame; client frames (``masked``) get a random key."""
    first = (0x80 if fin else 0) | opcode
    if not masked:
        return frame_header(first, len(payload)) + payload
    mask = os.urandom(4)
    return frame_header(first, len(payload), mask) + apply_mask(payload, mask)


def parse_header(buf: bytes | bytearray, pos: int) -> tuple[int, int, bytes | None, int] | None:
    """``(first_byte, header_length, mask_or_None, payload_length)`` of the frame at
    ``pos``, or None while its header is incomplete."""
    avail = len(buf) - pos
    if avail < 2:
        return None
    first = buf[pos]
    second = buf[pos + 1]
    length = second & 0x7F
    head = 2
    if length == 126:
        if avail < 4:
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        head = 4
    elif length == 127:
        if avail < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        head = 10
    mask = None
    if second & 0x80:
        if avail < head + 4:
            return None
        mask = bytes(buf[pos + head : pos + head + 4])
        head += 4
    return first, head, mask, length
