"""Waiting for a condition instead of for a time, and a guard against hung tests:
nothing here fails because the machine is slow."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

HANG_GUARD = 60.0  # seconds of real time; only a hung test ever gets near it


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, *, within: float = HANG_GUARD
) -> None:
    """Poll ``check`` (a function, or a coroutine function such as a Redis query)
    until it is true; fail naming ``what`` only after ``within`` seconds."""
    with trio.move_on_after(within):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(0.01)
    raise AssertionError(f"gave up after {within:g} s waiting for {what}")


def _guarded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def run(**kwargs: Any) -> None:
        with trio.fail_after(HANG_GUARD):
            await test(**kwargs)

    return run


def guard_async_tests(items: list[pytest.Item]) -> None:
    """Run every async test in ``items`` under a :data:`HANG_GUARD` deadline.

    (pytest-trio runs only fixtures a test names, so this wraps the test
    instead.)  Tests on Trio's mock clock are left alone: their time is virtual.
    """
    for item in items:
        test = getattr(item, "obj", None)
        names = getattr(item, "fixturenames", ())
        if not inspect.iscoroutinefunction(test) or hasattr(test, "hypothesis"):
            continue
        if "autojump_clock" in names or "mock_clock" in names:
            continue
        item.obj = _guarded(test)  # type: ignore[attr-defined]
