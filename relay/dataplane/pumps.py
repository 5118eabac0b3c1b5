"""The two frame pumps of a relayed session and the watch over them.

Each pump reads from one hop and writes to the other, awaiting each write
before the next read: a slow reader slows its sender, and a session holds at
most one read (64 KiB) plus one held frame per direction.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from relay.dataplane.hop import Hop, SendStalled
from relay.wire.closecodes import CloseCode, Outcome
from relay.wire.frames import CloseFrame, Violation

__all__ = ["Ending", "RelayWatch", "pump", "relay_frames"]


@attrs.frozen
class Ending:
    """Why the relay phase stopped short of a close relayed both ways."""

    outcome: Outcome
    detail: str = ""


def _lost(hop: Hop) -> Ending:
    return Ending(Outcome.TARGET_LOST if hop.is_target else Outcome.CLIENT_LOST)


def _violation(hop: Hop, violation: Violation) -> Ending:
    if violation.code is CloseCode.MESSAGE_TOO_BIG:
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
        out, data_seen, stop = incoming.feed(data)
        # Nothing from this read may stay referenced while the pump waits for
        # the next one: an idle session would keep its last read (up to 256 KiB).
        del data
        if out:
            try:
                await dst.send_bytes(out)
            except SendStalled:
                # It takes nothing: disconnected without a close, which it would not read.
                dst.mark_lost()
                return Ending(Outcome.SEND_STALLED, f"{dst.name} stopped reading")
            except trio.BrokenResourceError:
                dst.mark_lost()
                return _lost(dst)
        del out
        if data_seen and on_data is not None:
            on_data()
        if stop is None:
            continue
        if isinstance(stop, CloseFrame):
            src.peer_closed(stop)
            dst.close_relayed(stop.code)
            return None
        return _violation(src, stop)


class RelayWatch:
    """The state of one relay phase: its nursery, how it ended, closes seen.

    A class rather than closures: it is built once per session and a session
    should cost as little memory as possible while it idles.
    """

    __slots__ = ("close_timeout", "closes", "ending", "idle", "idle_timeout", "nursery")

    def __init__(self, nursery: trio.Nursery, idle_timeout: float, close_timeout: float) -> None:
        self.nursery = nursery
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout
        self.ending: Ending | None = None
        self.closes = 0
        self.idle: trio.CancelScope | None = None

    def finish(self, result: Ending) -> None:
        """End the relay phase with ``result`` (the first ending wins)."""
        if self.ending is None:
            self.ending = result
        self.nursery.cancel_scope.cancel()

    async def run(self, src: Hop, dst: Hop, on_data: Callable[[], None] | None) -> None:
        result = await pump(src, dst, on_data)
        if result is not None:
            self.finish(result)
            return
        self.closes += 1
        if self.closes == 2:
            self.nursery.cancel_scope.cancel()  # both closes relayed: stop the watchers
        else:
            # The other side has close_timeout to answer (see relay_frames).
            self.nursery.cancel_scope.deadline = trio.current_time() + self.close_timeout

    def push_idle_deadline(self) -> None:
        assert self.idle is not None
        self.idle.deadline = trio.current_time() + self.idle_timeout

    async def watch_idle(self) -> None:
        idle = self.idle
        assert idle is not None
        with idle:
            await trio.sleep_forever()
        if idle.cancelled_caught:
            self.finish(Ending(Outcome.IDLE_TIMEOUT))


async def relay_frames(
    client: Hop,
    target: Hop,
    *,
    idle_timeout: float,
    close_timeout: float,
    on_start: Callable[[RelayWatch], None] | None = None,
) -> Ending | None:
    """Run both pumps; None when a close went each way, else why the relay stopped.

    Once one side's close is relayed, the other side has ``close_timeout``
    seconds to answer (meanwhile its frames still flow); with
    ``idle_timeout`` > 0, that long without a data frame from the target ends
    the session.  ``on_start`` receives the :class:`RelayWatch`, whose
    ``finish()`` ends the phase from outside (a shutdown).
    """
    async with trio.open_nursery() as nursery:
        watch = RelayWatch(nursery, idle_timeout, close_timeout)
        if on_start is not None:
            on_start(watch)
        on_target_data: Callable[[], None] | None = None
        if idle_timeout > 0:
            watch.idle = trio.CancelScope(deadline=trio.current_time() + idle_timeout)
            nursery.start_soon(watch.watch_idle)
            on_target_data = watch.push_idle_deadline
        nursery.start_soon(watch.run, client, target, None)
        nursery.start_soon(watch.run, target, client, on_target_data)
    if watch.ending is None and watch.closes == 1:
        # Only the close-reply deadline ends the phase with one close relayed
        # and nothing else said: an outside cancellation would have raised.
        watch.ending = Ending(Outcome.CLOSED, "close not answered")
    return watch.ending
