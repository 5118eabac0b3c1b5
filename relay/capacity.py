"""How much the gateway holds open at once, and the caps on it.

Three counts, each with its cap from the configuration:

* connections still sending their HTTP request head (``[server] max_handshakes``):
  a slowloris holds many of these; beyond the cap new connections are closed
  at once, before a byte is read;
* relay sessions, from the client's WebSocket handshake to the end
  (``[server] max_sessions``): over it the client is told to come back (1013);
* sessions per API key (``[[keys]] max_sessions``): over it, a policy
  violation (1008).

Everything here runs in one Trio thread, so plain counters are exact.
"""

from __future__ import annotations

import attrs

from relay.config import KeyConfig

__all__ = ["Capacity", "Claim"]


@attrs.define
class Capacity:
    """Gateway-wide counts of handshakes and sessions."""

    max_handshakes: int
    max_sessions: int
    handshakes: int = 0
    sessions: int = 0
    per_key: dict[bytes, int] = attrs.Factory(dict)  # by key digest: names need not be unique

    def enter_handshake(self) -> bool:
        """Count a new connection reading its request head; False when full."""
        if self.handshakes >= self.max_handshakes:
            return False
        self.handshakes += 1
        return True

    def leave_handshake(self) -> None:
        """The request head was read (or the connection gave up)."""
        self.handshakes -= 1

    def claim(self) -> Claim:
        """A new session's claim on capacity; release it when the session ends."""
        return Claim(self)


class Claim:
    """What one session holds: a session slot, then its key's slot."""

    __slots__ = ("_capacity", "_key", "_session")

    def __init__(self, capacity: Capacity) -> None:
        self._capacity = capacity
        self._session = False
        self._key: bytes | None = None

    def session(self) -> bool:
        """Take a gateway-wide session slot; False when there is none left."""
        capacity = self._capacity
        if self._session or capacity.sessions >= capacity.max_sessions:
            return self._session
        capacity.sessions += 1
        self._session = True
        return True

    def key(self, key: KeyConfig) -> bool:
        """Take one of ``key``'s session slots; False when it has none left."""
        if self._key is not None:
            return True
        per_key = self._capacity.per_key
        digest = key.digest
        held = per_key.get(digest, 0)
        if key.max_sessions is not None and held >= key.max_sessions:
            return False
        per_key[digest] = held + 1
        self._key = digest
        return True

    def release(self) -> None:
        """Give back whatever is held (idempotent)."""
        capacity = self._capacity
        if self._session:
            capacity.sessions -= 1
            self._session = False
        if self._key is not None:
            left = capacity.per_key[self._key] - 1
            if left:
                capacity.per_key[self._key] = left
            else:
                del capacity.per_key[self._key]  # no entry per key ever seen
            self._key = None
