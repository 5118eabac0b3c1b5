"""Ending a session: who is sent which close, who is waited for, and for how long.

The rules (docs/architecture.md, "Closing"): first, what each side is owed
before a close can follow it is delivered, within ``grace`` seconds — the rest
of a send that cancellation cut short, and the rest of a frame over 64 KiB
that was being streamed to it, relayed as it arrives.  Then a side that
closed first and was never answered gets its own code back; otherwise the
outcome's code from :mod:`relay.wire.closecodes`; a side that still cannot
take a frame (gone, or a frame to it left unfinished) is disconnected without
one, which is counted; a side that was sent a close is given ``grace``
seconds to answer.
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
            if not can_send or not hop.can_send_close:
                if not (hop.lost or hop.close_sent):
                    hop.close_skipped()  # owed a close that would follow half a frame
                    # What was relayed to it must not be destroyed by a reset.
                    await hop.linger()
            else:
                await hop.send_close(code, reason)
            if hop.close_sent and not hop.send_broken and not hop.incoming.broken:
                await _await_close(hop)
        except trio.BrokenResourceError:
            hop.mark_lost()
    await hop.aclose()


async def _complete_frames(dst: Hop, src: Hop) -> None:
    """Deliver to ``dst`` what it is owed before a close: a cut-short send's rest,
    then the rest of the frame ``src`` was streaming to it, read as it arrives.

    Nothing past that frame is read: the next bytes (``src``'s close answer,
    say) stay in ``src.pending`` for whoever reads ``src`` next.
    """
    incoming = src.incoming
    try:
        await dst.flush()
        while incoming.mid_frame and not src.lost and not dst.lost:
            data = await src.receive()
            if not data:
                return
            rest = incoming.frame_rest
            if len(data) > rest:
                src.pending = bytes(data[rest:])
                data = data[:rest]
            out = incoming.feed(data).out
            del data
            if out:
                await dst.send_bytes(out)
    except trio.BrokenResourceError:
        dst.mark_lost()


def _owes_frames(dst: Hop, src: Hop) -> bool:
    return not dst.lost and (bool(dst.unsent) or (src.incoming.mid_frame and not src.lost))


async def end_relay(client: Hop, target: Hop, ending: Ending | None, grace: float) -> None:
    """Close both hops after the relay phase."""
    if ending is not None and (_owes_frames(client, target) or _owes_frames(target, client)):
        # Both directions at once: each reads one hop and writes the other.
        # Done before any close is awaited, which reads the same hops.
        with trio.move_on_after(grace):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_complete_frames, client, target)
                nursery.start_soon(_complete_frames, target, client)
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
