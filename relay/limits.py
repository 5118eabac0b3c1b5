"""Choosing where limits live: ``[ratelimit] backend = "memory" | "redis"``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from relay.config import RateLimitConfig
from relay.ratelimit import MemoryRateLimiter, RateLimiter
from relay.slots import MemorySessionSlots, SessionSlots

__all__ = ["Limits", "open_limits"]


@attrs.frozen
class Limits:
    """A gateway's token buckets and session counts."""

    limiter: RateLimiter
    slots: SessionSlots


@asynccontextmanager
async def open_limits(config: RateLimitConfig) -> AsyncIterator[Limits]:
    """The configured backend, open for as long as the block runs.

    ``redis`` raises :class:`relay.ratelimit.LimitsUnavailable` when Redis
    cannot be reached at start-up.
    """
    if config.backend == "memory":
        yield Limits(MemoryRateLimiter(), MemorySessionSlots())
        return
    # Imported here: coredis takes a second to import, and only this backend needs it.
    from relay.redis_limits import open_redis

    async with open_redis(config) as (limiter, slots):
        yield Limits(limiter, slots)
