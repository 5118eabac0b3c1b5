"""Ending a session: who is sent which close, who is waited for, and for how long.

The rules (docs/architecture.md, "Closing"): a side that closed first and was
never answered gets its own code back; otherwise the outcome's code from
:mod:`relay.wire.closecodes`; a side that cannot take a frame (gone, a send cut
short, half of a streamed frame sent to it) is simply disconnected; a side
that was sent a close is given ``grace`` seconds to answer.
"""

from __future__ import annotations

import trio

from relay.dataplane.hop import Hop
from relay.dataplane.pumps import Ending
from relay.wire.closecodes import Outcome, SessionError, code_for, echo_code, reason_for
from relay.wire.frames import TEXT, CloseFrame

__all__ = ["close_hop", "end_relay", "refuse"]


async def _await_close(hop: Hop) -> None:
    """Read until the peer's close frame (or EOF), discarding anything else."""
    incoming = hop.incoming
    incoming.drain()
    while hop.close_received is None and not hop.lost and not incoming.broken:
        data = await hop.receive()
        if not data:
            return
        stop = incoming.feed(data).stop
        if isinstance(stop, CloseFrame):
            hop.peer_closed(stop)


async def close_hop(hop: Hop, code: int | None, reason: str, can_send: bool, grace: float) -> None:
    """Send ``hop`` a close (unless it cannot take one), wait up to ``grace`` seconds
    for its answer, disconnect."""
    with trio.move_on_after(grace):
        try:
            if can_send and hop.can_send_close:
                await hop.send_close(code, reason)
            if hop.close_sent and not hop.send_broken and not hop.incoming.broken:
                await _await_close(hop)
        except trio.BrokenResourceError:
            hop.mark_lost()
    await hop.aclose()


async def end_relay(client: Hop, target: Hop, ending: Ending | None, grace: float) -> None:
    """Close both hops after the relay phase."""
    if ending is None:
        # Both closes relayed: the server side closes TCP first; the target,
        # a server too, is given the chance to do the same.
        await client.aclose()
        with trio.move_on_after(grace):
            await _await_eof(target)
        await target.aclose()
        return
    async with trio.open_nursery() as nursery:
        for hop, other in ((client, target), (target, client)):
            if ending.outcome is Outcome.CLOSED and hop.close_received is None:
                # It was sent the other side's close and did not answer in time.
                nursery.start_soon(hop.aclose)
                continue
            if hop.close_received is not None:
                # It closed first and is owed an answer the other side never gave.
                code: int | None = echo_code(hop.close_received.code)
                reason = ""
            else:
                code = code_for(ending.outcome, to_target=hop.is_target)
                reason = reason_for(ending.outcome, to_target=hop.is_target, detail=ending.detail)
            # A frame half-forwarded cannot be followed by a close frame.
            can_send = not other.incoming.mid_frame
            nursery.start_soon(close_hop, hop, code, reason, can_send, grace)


async def _await_eof(hop: Hop) -> None:
    while not hop.lost:
        if not await hop.receive():
            return


async def refuse(client: Hop, error: SessionError, text: str, grace: float) -> None:
    """Send the client ``text`` (why there is no session), then close with the mapped code."""
    with trio.move_on_after(grace):
        try:
            if client.close_received is None and not client.lost:
                await client.send_frame(TEXT, text.encode())
        except trio.BrokenResourceError:
            client.mark_lost()
    await close_hop(client, error.close_code, error.message, True, grace)
