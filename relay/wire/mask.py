"""XOR masking of WebSocket payloads (RFC 6455 section 5.3), in place.

Large regions use the C ``apply_mask`` that ships with the ``websockets``
package (~10 GB/s here on 64 KiB regions); without it, one big-integer XOR
(~0.4 GB/s).  Small regions — most frames at chat-message sizes — are not
worth a C call each; relay/wire/frames.py batches those into one big-integer pass
per read.  docs/performance.md has the figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["C_XOR", "MASK_KEYS", "MaskKeys", "xor_bytes", "xor_region"]

_apply_mask: Callable[[bytes | bytearray | memoryview, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the C extension is missing on this platform
    _apply_mask = None

C_XOR = _apply_mask is not None


def _xor_int(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    n = len(data)
    stream = (key * ((n >> 2) + 1))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")
    return value.to_bytes(n, "little")


xor_bytes: Callable[[bytes | bytearray | memoryview, bytes], bytes] = _apply_mask or _xor_int
"""``data`` XOR the 4-byte ``key`` repeated, as new bytes."""


def xor_region(buf: bytearray, start: int, end: int, key: bytes, phase: int) -> None:
    """XOR ``buf[start:end]`` with the 4-byte ``key`` repeated, starting at key
    offset ``phase`` (0-3), so a payload split across reads masks identically."""
    if end <= start:
        return
    if phase:
        key = key[phase:] + key[:phase]
    with memoryview(buf) as view:
        buf[start:end] = xor_bytes(view[start:end], key)


class MaskKeys:
    """Mask keys drawn from one ``os.urandom`` read per 1,024 keys.

    One urandom call per key costs ~0.5 µs; slicing a batch costs ~12 ns.
    Sessions share :data:`MASK_KEYS` (a batch per session would cost every
    idle session 4 KiB).
    """

    __slots__ = ("_batch", "_pos")

    _BATCH = 4096

    def __init__(self) -> None:
        self._batch = os.urandom(self._BATCH)
        self._pos = 0

    def next(self) -> bytes:
        """Return a fresh 4-byte key."""
        pos = self._pos
        if pos >= self._BATCH:
            self._batch = os.urandom(self._BATCH)
            pos = 0
        self._pos = pos + 4
        return self._batch[pos : pos + 4]


MASK_KEYS = MaskKeys()
