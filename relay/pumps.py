"""The two frame pumps of a relayed session and the watch over them.

Each pump reads from one hop and writes to the other, awaiting each write
before the next read: a slow reader slows its sender, and a session holds at
most one read (64 KiB) plus one held frame per direction.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from relay.closecodes import Outcome
from relay.frames import CloseFrame, Violation
from relay.hop import Hop

__all__ = ["Ending", "pump", "relay_frames"]


@attrs.frozen
class Ending:
    """Why the relay phase stopped short of a close relayed both ways."""

    outcome: Outcome
    detail: str = ""


def _lost(hop: Hop) -> Ending:
    return Ending(Outcome.TARGET_LOST if hop.is_target else Outcome.CLIENT_LOST)


def _violation(hop: Hop, violation: Violation) -> Ending:
    if violation.code == 1009:
        return Ending(Outcome.MESSAGE_TOO_BIG, violation.reason)
    outcome = Outcome.TARGET_PROTOCOL_ERROR if hop.is_target else Outcome.CLIENT_PROTOCOL_ERROR
    return Ending(outcome, violation.reason)


async def pump(src: Hop, dst: Hop, on_data: Callable[[], None] | None = None) -> Ending | None:
    """Move frames from ``src`` to ``dst`` until ``src`` closes; None for a close
    frame relayed, else the :class:`Ending` that stopped it."""
    incoming = src.incoming
    while True:
        data = await src.receive()
        if not data:
            return _lost(src)
        chunk = incoming.feed(data)
        if chunk.out:
            try:
                await dst.send_bytes(chunk.out)
            except trio.BrokenResourceError:
                dst.lost = True
                return _lost(dst)
        if chunk.data_seen and on_data is not None:
            on_data()
        stop = chunk.stop
        if stop is None:
            continue
        if isinstance(stop, CloseFrame):
            src.close_received = stop
            dst.close_sent = True
            return None
        return _violation(src, stop)


async def relay_frames(
    client: Hop, target: Hop, *, idle_timeout: float, close_timeout: float
) -> Ending | None:
    """Run both pumps; None when a close went each way, else why the relay stopped.

    Once one side's close is relayed, the other side has ``close_timeout``
    seconds to answer (meanwhile its frames still flow); with
    ``idle_timeout`` > 0, that long without a data frame from the target ends
    the session.
    """
    ending: Ending | None = None
    closes = 0

    async with trio.open_nursery() as nursery:

        def finish(result: Ending) -> None:
            nonlocal ending
            if ending is None:
                ending = result
            nursery.cancel_scope.cancel()

        async def watch_close_reply() -> None:
            await trio.sleep(close_timeout)
            finish(Ending(Outcome.CLOSED, "close not answered"))

        async def run(src: Hop, dst: Hop, on_data: Callable[[], None] | None) -> None:
            nonlocal closes
            result = await pump(src, dst, on_data)
            if result is not None:
                finish(result)
                return
            closes += 1
            if closes == 2:
                nursery.cancel_scope.cancel()  # both closes relayed: stop the watchers
            else:
                nursery.start_soon(watch_close_reply)

        on_target_data: Callable[[], None] | None = None
        if idle_timeout > 0:
            idle = trio.CancelScope(deadline=trio.current_time() + idle_timeout)

            def push_idle_deadline() -> None:
                idle.deadline = trio.current_time() + idle_timeout

            async def watch_idle() -> None:
                with idle:
                    await trio.sleep_forever()
                if idle.cancelled_caught:
                    finish(Ending(Outcome.IDLE_TIMEOUT))

            on_target_data = push_idle_deadline
            nursery.start_soon(watch_idle)

        nursery.start_soon(run, client, target, None)
        nursery.start_soon(run, target, client, on_target_data)
    return ending
