"""Connections still sending their HTTP request head, and the cap on them.

A slowloris holds many such connections open; beyond ``[server]
max_handshakes`` new connections are closed at once, before a byte is read.
(The cap on relay sessions in total is the session registry's; the one per
API key is the limits backend's session slots.)

Everything here runs in one Trio thread, so a plain counter is exact.
"""

from __future__ import annotations

import attrs

__all__ = ["Capacity"]


@attrs.define
class Capacity:
    """Gateway-wide count of connections in their handshake."""

    max_handshakes: int
    handshakes: int = 0

    def enter_handshake(self) -> bool:
        """Count a new connection reading its request head; False when full."""
        if self.handshakes >= self.max_handshakes:
            return False
        self.handshakes += 1
        return True

    def leave_handshake(self) -> None:
        """The request head was read (or the connection gave up)."""
        self.handshakes -= 1
