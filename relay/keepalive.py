"""TCP keepalive on relayed connections: a peer that vanishes without a FIN or
a RST (a powered-off machine, a NAT that forgot the flow) is noticed and its
session ends, instead of holding its slot and its memory for good.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import trio

__all__ = ["KEEPALIVE_PROBES", "hop_keepalive", "set_keepalive", "socket_of"]

# Unanswered probes before the kernel gives up on the connection.
KEEPALIVE_PROBES = 6


def socket_of(stream: trio.abc.Stream) -> Any | None:
    """The TCP socket under ``stream`` (through TLS layers), if there is one."""
    layer: Any = stream
    while layer is not None:
        sock = getattr(layer, "socket", None)
        if sock is not None:
            return sock if sock.family in (socket.AF_INET, socket.AF_INET6) else None
        layer = getattr(layer, "transport_stream", None)
    return None


def set_keepalive(
    stream: trio.abc.Stream,
    *,
    idle: int,
    interval: int,
    probes: int,
    user_timeout: float | None = None,
) -> None:
    """Probe after ``idle`` quiet seconds, every ``interval``; ``probes`` unanswered
    end the connection.  ``user_timeout``: data unacknowledged that long ends it too.
    Linux options; best effort where a platform lacks one."""
    sock = socket_of(stream)
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if hasattr(socket, "TCP_KEEPIDLE"):
        options += [
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes),
        ]
    if user_timeout is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000)))
    for level, name, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, value)


def hop_keepalive(stream: trio.abc.Stream, idle: float) -> None:
    """Keepalive for a client or target connection: a vanished peer is dropped
    about ``2 * idle`` seconds after it last spoke; ``idle`` 0 leaves it off."""
    if idle <= 0:
        return
    seconds = max(1, round(idle))
    interval = max(1, round(seconds / KEEPALIVE_PROBES))
    set_keepalive(stream, idle=seconds, interval=interval, probes=KEEPALIVE_PROBES)
