"""One relay session, from the client's 101 to both connections closed.

The session owns everything it opens: the connect deadline, the target
connection, the pumps (in :func:`relay.pumps.relay_frames`) and the closing.
Nothing raised here leaves the session except cancellation.
"""

from __future__ import annotations

import logging
import time

import trio

from relay.capacity import Claim
from relay.closecodes import (
    Outcome,
    SessionError,
    code_for,
    echo_code,
    reason_for,
)
from relay.converter import InputError
from relay.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    CloseFrame,
    Frame,
    FrameReader,
    Violation,
    parse_close_payload,
)
from relay.gateway import Gateway
from relay.hop import Hop
from relay.protocol import (
    ConnectRequest,
    connected_message,
    error_message,
    parse_connect_message,
    parse_connect_query,
)
from relay.pumps import Ending, relay_frames

__all__ = ["run_session"]

log = logging.getLogger("relay.session")


async def _read_connect_message(client: Hop, max_size: int) -> str | None:
    """The connect message's text; None if the client closed or left first.

    The relay is the client's endpoint until the target is connected, so it
    answers pings and a close here itself.
    """
    reader = FrameReader(from_client=True, max_frame=max_size)
    reader.feed(client.pending)
    client.pending = b""
    parts: list[bytes] = []
    size = 0
    while True:
        item = reader.next_frame()
        if item is None:
            data = await client.receive()
            if not data:
                return None
            reader.feed(data)
            continue
        if isinstance(item, Violation):
            outcome = (
                Outcome.CONNECT_TOO_BIG if item.code == 1009 else Outcome.CLIENT_PROTOCOL_ERROR
            )
            raise SessionError(outcome, _connect_violation(item, max_size))
        frame: Frame = item
        if frame.opcode == PING:
            await client.send_frame(PONG, frame.payload)
            continue
        if frame.opcode == PONG:
            continue
        if frame.opcode == CLOSE:
            client.close_received = parse_close_payload(frame.payload)
            return None
        if frame.opcode == BINARY and not parts:
            raise SessionError(
                Outcome.BAD_REQUEST, "The connect message must be a JSON text frame, not binary"
            )
        if not (frame.opcode == TEXT and not parts) and not (
            frame.opcode == CONTINUATION and parts
        ):
            raise SessionError(Outcome.CLIENT_PROTOCOL_ERROR, "unexpected frame opcode")
        size += len(frame.payload)
        if size > max_size:
            raise SessionError(
                Outcome.CONNECT_TOO_BIG, f"The connect message is over {max_size} bytes"
            )
        parts.append(frame.payload)
        if frame.fin:
            client.pending = reader.take_buffered()
            try:
                return b"".join(parts).decode("utf-8")
            except UnicodeDecodeError:
                raise SessionError(
                    Outcome.BAD_REQUEST, "The connect message is not valid UTF-8"
                ) from None


def _connect_violation(violation: Violation, max_size: int) -> str:
    if violation.code == 1009:
        return f"The connect message is over {max_size} bytes"
    return f"Protocol error: {violation.reason}"


async def _connect_request(gateway: Gateway, client: Hop, query: str) -> ConnectRequest | None:
    """The validated connect request from the query string or the first message."""
    timeout = gateway.config.server.connect_timeout
    limits = gateway.config.server.connect_limits
    try:
        from_query = parse_connect_query(query, limits)
        if from_query is not None:
            return from_query
        text: str | None = None
        with trio.move_on_after(timeout):
            text = await _read_connect_message(
                client, gateway.config.server.max_connect_message_size
            )
            if text is None:
                return None
            return parse_connect_message(text, limits)
        raise SessionError(
            Outcome.CONNECT_TIMEOUT, f"No connect message within {timeout:g} seconds"
        )
    except InputError as exc:
        raise SessionError(Outcome.BAD_REQUEST, str(exc)) from None


def _take_session_slot(claim: Claim) -> None:
    if not claim.session():
        raise SessionError(Outcome.OVER_CAPACITY, "Server at capacity, try again later")


async def _open_target(
    gateway: Gateway, request: ConnectRequest, claim: Claim
) -> tuple[Hop, str, int]:
    """Authenticate, take a token and the key's session slot, pick an agent, open the target."""
    key = gateway.keys.lookup(request.api_key)
    if key is None:
        raise SessionError(Outcome.AUTH_FAILED, "Invalid or missing API key")
    if not await gateway.limiter.acquire(key):
        raise SessionError(Outcome.RATE_LIMITED, "Rate limit exceeded")
    if not claim.key(key):
        raise SessionError(
            Outcome.KEY_SESSION_LIMIT, "Too many concurrent sessions for this API key"
        )
    agent = gateway.agents.choose(request)
    connection = await agent.open(request)
    target = Hop(
        "target",
        connection.stream,
        is_target=True,
        max_message_size=gateway.config.server.max_message_size,
        pending=connection.trailing,
    )
    return target, agent.node_id, connection.status


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
            hop.close_received = stop


async def _close_hop(hop: Hop, code: int | None, reason: str, can_send: bool, grace: float) -> None:
    """Send ``hop`` a close (unless it cannot take one), wait up to ``grace`` seconds
    for its answer, disconnect."""
    with trio.move_on_after(grace):
        try:
            if can_send and not hop.close_sent and not hop.lost and not hop.send_broken:
                await hop.send_close(code, reason)
            if hop.close_sent and not hop.send_broken and not hop.incoming.broken:
                await _await_close(hop)
        except trio.BrokenResourceError:
            hop.lost = True
    await hop.aclose()


async def _end_relay(client: Hop, target: Hop, ending: Ending | None, grace: float) -> None:
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
            nursery.start_soon(_close_hop, hop, code, reason, can_send, grace)


async def _await_eof(hop: Hop) -> None:
    while not hop.lost:
        if not await hop.receive():
            return


async def _refuse(client: Hop, error: SessionError, grace: float) -> None:
    """Tell the client why there is no session, then close with the mapped code."""
    with trio.move_on_after(grace):
        try:
            if client.close_received is None and not client.lost:
                await client.send_frame(TEXT, error_message(error.message).encode())
        except trio.BrokenResourceError:
            client.lost = True
    await _close_hop(client, error.close_code, error.message, True, grace)


async def run_session(
    gateway: Gateway, stream: trio.abc.Stream, *, query: str, pending: bytes
) -> None:
    """Serve one client whose WebSocket handshake has completed on ``stream``."""
    config = gateway.config.server
    client = Hop(
        "client", stream, is_target=False, max_message_size=config.max_message_size, pending=pending
    )
    stats = gateway.stats
    stats.sessions_started += 1
    stats.sessions_active += 1
    started = time.monotonic()
    outcome = Outcome.CLOSED
    node_id = "-"
    target: Hop | None = None
    claim = gateway.capacity.claim()
    try:
        try:
            _take_session_slot(claim)
            request = await _connect_request(gateway, client, query)
            if request is None:
                outcome = Outcome.CLIENT_LOST if client.close_received is None else Outcome.CLOSED
                code = echo_code(client.close_received.code) if client.close_received else None
                await _close_hop(
                    client,
                    code,
                    "",
                    client.close_received is not None,
                    config.close_timeout,
                )
                return
            target, node_id, status = await _open_target(gateway, request, claim)
            if request.send_connected:
                await client.send_frame(TEXT, connected_message(node_id, status).encode())
        except SessionError as error:
            outcome = error.outcome
            await _refuse(client, error, config.close_timeout)
            return
        except trio.BrokenResourceError:
            outcome = Outcome.CLIENT_LOST
            await client.aclose()
            if target is not None:
                await target.aclose()
            return
        ending = await relay_frames(
            client, target, idle_timeout=request.idle_timeout, close_timeout=config.close_timeout
        )
        outcome = Outcome.CLOSED if ending is None else ending.outcome
        await _end_relay(client, target, ending, config.close_timeout)
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
            if target is not None:
                await target.aclose()
        claim.release()
        stats.ended(outcome.value)
        log.info(
            "session end outcome=%s node=%s duration=%.3fs "
            "bytes_from_client=%d bytes_from_target=%d",
            outcome.value,
            node_id,
            time.monotonic() - started,
            client.bytes_in,
            target.bytes_in if target is not None else 0,
        )
