"""Token buckets per API key: one token per validated connect message.

:class:`TokenBucket` is pure arithmetic on a caller-supplied clock, so refill
is tested with Trio's autojump clock; :class:`MemoryRateLimiter` is the
single-process backend behind the :class:`RateLimiter` interface
(:mod:`relay.redis_limits` has the shared one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Protocol

import attrs
import trio

from relay.config import KeyConfig

__all__ = ["LimitsUnavailable", "MemoryRateLimiter", "RateLimiter", "TokenBucket", "limit_id"]


class LimitsUnavailable(Exception):
    """A shared limits backend cannot answer and its policy is to refuse (fail-closed)."""


def limit_id(key: KeyConfig) -> str:
    """The name a key's shared limits are stored under.

    Derived from the key's digest, so every gateway configured with the same
    key (by value or by hash, under any ``name``) finds the same bucket, and
    the stored name is neither the key nor the ``key_sha256`` of a config file.
    """
    return hashlib.sha256(b"relay-limits:" + key.digest).hexdigest()[:32]


@attrs.define
class TokenBucket:
    """``burst`` tokens at most, ``rate`` tokens added per second."""

    rate: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        """A bucket that starts with ``burst`` tokens."""
        return cls(rate, burst, float(burst), now)

    def take(self, now: float) -> bool:
        """Refill for the time since the last call, then take one token if there is one."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter(Protocol):
    """Where a key's bucket lives."""

    async def acquire(self, key: KeyConfig) -> bool:
        """Take one token for ``key``; False when its bucket is empty.

        May raise :class:`LimitsUnavailable` (a shared backend that fails closed).
        """
        ...


class MemoryRateLimiter:
    """Buckets in this process's memory (the default backend)."""

    def __init__(self) -> None:
        self._buckets: dict[bytes, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    async def acquire(self, key: KeyConfig) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        now = trio.current_time()
        bucket = self._buckets.get(key.digest)
        if bucket is None:
            bucket = self._buckets[key.digest] = TokenBucket.full(key.rate, key.burst, now)
        else:
            # The key's current limits (a reload may have changed them); its tokens stay.
            bucket.rate, bucket.burst = key.rate, key.burst
        return bucket.take(now)

    def retain(self, digests: Collection[bytes]) -> None:
        """Forget the buckets of keys not in ``digests`` (revoked by a reload)."""
        for digest in [d for d in self._buckets if d not in digests]:
            del self._buckets[digest]
