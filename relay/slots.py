"""Per-key concurrent-session limits (``[[keys]] max_sessions``).

A :class:`SessionSlots` backend counts the sessions each key holds.  A session
*claims* a slot after its token is taken, *refreshes* it every ``heartbeat``
seconds while it lives (backends whose claims expire, so that a gateway that
dies without releasing stops counting), and *releases* it when it ends.

:class:`MemorySessionSlots` is the single-process backend;
:class:`relay.redis_limits.RedisSessionSlots` shares the counts between
gateways.  :class:`SessionClaim` is the session's side of it.
"""

from __future__ import annotations

import secrets
from typing import Protocol

import attrs
import trio

from relay.config import KeyConfig
from relay.ratelimit import limit_id

__all__ = ["MemorySessionSlots", "SessionClaim", "SessionSlots"]


class SessionSlots(Protocol):
    """Where the count of each key's live sessions is kept."""

    @property
    def heartbeat(self) -> float | None:
        """Seconds between refreshes of a live claim; None when claims never expire."""
        ...

    async def claim(self, key_id: str, limit: int, session_id: str) -> bool:
        """Count ``session_id`` against ``key_id``; False when ``limit`` sessions are live.

        May raise :class:`relay.ratelimit.LimitsUnavailable` (a shared
        backend that fails closed).
        """
        ...

    async def refresh(self, key_id: str, session_id: str) -> None:
        """Keep a live claim from expiring.  Never raises."""
        ...

    async def release(self, key_id: str, session_id: str) -> None:
        """Stop counting ``session_id``.  Never raises."""
        ...


class MemorySessionSlots:
    """Session counts in this process's memory; claims never expire (they die with it)."""

    def __init__(self) -> None:
        self._live: dict[str, set[str]] = {}

    @property
    def heartbeat(self) -> float | None:
        """None: nothing to refresh."""
        return None

    def count(self, key_id: str) -> int:
        """Sessions ``key_id`` holds now."""
        return len(self._live.get(key_id, ()))

    def held(self) -> int:
        """Sessions held now, all keys together."""
        return sum(len(live) for live in self._live.values())

    async def claim(self, key_id: str, limit: int, session_id: str) -> bool:
        """Count ``session_id`` unless ``limit`` sessions are live."""
        live = self._live.setdefault(key_id, set())
        if session_id not in live and len(live) >= limit:
            return False
        live.add(session_id)
        return True

    async def refresh(self, key_id: str, session_id: str) -> None:
        """Nothing expires here."""

    async def release(self, key_id: str, session_id: str) -> None:
        """Forget ``session_id``; a key with no sessions left is dropped."""
        live = self._live.get(key_id)
        if live is not None:
            live.discard(session_id)
            if not live:
                del self._live[key_id]


def _new_session_id() -> str:
    return secrets.token_hex(8)


@attrs.define
class SessionClaim:
    """One session's hold on its key's quota: claim, keep alive, release.

    A key without ``max_sessions`` claims nothing and costs no backend call.
    """

    slots: SessionSlots
    session_id: str = attrs.Factory(_new_session_id)
    key_id: str | None = None  # set while a slot is held

    async def claim(self, key: KeyConfig) -> bool:
        """Take a slot for ``key``; False when the key is at its limit."""
        if key.max_sessions is None:
            return True
        key_id = limit_id(key)
        if not await self.slots.claim(key_id, key.max_sessions, self.session_id):
            return False
        self.key_id = key_id
        return True

    async def keep_alive(self) -> None:
        """Refresh the slot until cancelled (run it in the session's nursery)."""
        interval = self.slots.heartbeat
        if interval is None:
            return
        while self.key_id is not None:
            await trio.sleep(interval)
            if self.key_id is not None:
                await self.slots.refresh(self.key_id, self.session_id)

    async def release(self) -> None:
        """Give the slot back (idempotent)."""
        if self.key_id is not None:
            key_id, self.key_id = self.key_id, None
            await self.slots.release(key_id, self.session_id)
