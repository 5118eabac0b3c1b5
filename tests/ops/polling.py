"""Waiting for a condition instead of for a time: nothing here fails on a slow machine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

HANG_GUARD = 30.0  # seconds; only a hung test ever gets near it


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, within: float = HANG_GUARD
) -> None:
    """Poll ``check`` until it returns True; fail naming ``what`` after ``within`` seconds."""
    with trio.move_on_after(within):
        while True:
            if await check():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"gave up after {within:g} s waiting for {what}")
