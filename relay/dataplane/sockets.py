"""A hop's socket, taken from under Trio's stream for the pumps, and the read sizes.

Kept apart from :mod:`relay.dataplane.hop` so the TLS wire
(:mod:`relay.dataplane.tls`) can use it and the hop can use the TLS wire.
"""

from __future__ import annotations

import socket

import trio

__all__ = ["MAX_RECEIVE_SIZE", "RECEIVE_SIZE", "adopt_socket"]

RECEIVE_SIZE = 64 * 1024
MAX_RECEIVE_SIZE = 256 * 1024

_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)


def adopt_socket(stream: trio.abc.Stream) -> tuple[trio.abc.Stream, socket.socket | None]:
    """Take the stdlib socket under a plain ``trio.SocketStream``, for the pumps.

    Returns a new stream on the same connection and its socket (None for any
    other stream: TLS, in-memory, which take the generic path).  Only public
    API is used: the Trio socket gives up its descriptor (``detach``) to a
    stdlib socket, which a new Trio socket stream wraps for everything else.
    """
    if type(stream) is not trio.SocketStream:
        return stream, None
    trio_socket = stream.socket
    raw = socket.socket(
        trio_socket.family, trio_socket.type, trio_socket.proto, trio_socket.detach()
    )
    raw.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
    if _NOTSENT_LOWAT is not None:
        # SocketStream caps unsent data at 16 KiB, which favours latency on
        # interactive streams; a relay moving large messages then needs a
        # send call and a wake-up per 16 KiB.  0 restores the system default.
        raw.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, 0)
    return stream, raw
