"""One relay session, from the client's 101 to both connections closed.

The session owns everything it opens: the connect deadline, the target
connection, the pumps (in :func:`relay.pumps.relay_frames`) and the closing.
Nothing raised here leaves the session except cancellation.

The same session serves two front doors (a :class:`Front`): the gateway's
``/ws``, where clients authenticate and an agent is chosen, and a remote
agent's ``/agent``, where the gateway hands over a request the agent dials.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import attrs
import trio

from relay.closecodes import (
    Outcome,
    SessionError,
    code_for,
    echo_code,
    reason_for,
)
from relay.config import ServerConfig
from relay.converter import InputError
from relay.dial import TargetConnection
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
from relay.gateway import Gateway, Stats
from relay.hop import Hop
from relay.protocol import (
    ConnectRequest,
    connected_message,
    error_message,
    parse_connect_message,
    parse_connect_query,
)
from relay.pumps import Ending, relay_frames

__all__ = ["Front", "GatewayFront", "run_session", "serve_session"]

log = logging.getLogger("relay.session")


class Front(Protocol):
    """What differs between the session's front doors."""

    @property
    def server(self) -> ServerConfig:
        """Timeouts and size limits of this process."""
        ...

    @property
    def stats(self) -> Stats:
        """Counters this session adds to."""
        ...

    def query_request(self) -> ConnectRequest | None:
        """A request given without a connect message (the query string), if any."""
        ...

    def parse(self, text: str) -> ConnectRequest:
        """The connect message's text as a request; raises :class:`InputError`."""
        ...

    async def open(self, request: ConnectRequest) -> tuple[TargetConnection, str]:
        """Admit the request and open its target; the connection and the node_id."""
        ...

    def error_text(self, error: SessionError) -> str:
        """The text frame that tells the client why there is no session."""
        ...


@attrs.frozen
class GatewayFront:
    """The gateway's ``/ws``: API key, one token, an agent chosen by ``geo``/``agent``."""

    gateway: Gateway
    query: str = ""

    @property
    def server(self) -> ServerConfig:
        """The gateway's ``[server]`` settings."""
        return self.gateway.config.server

    @property
    def stats(self) -> Stats:
        """The gateway's counters."""
        return self.gateway.stats

    def query_request(self) -> ConnectRequest | None:
        """The ``/ws?url=…`` form."""
        return parse_connect_query(self.query)

    def parse(self, text: str) -> ConnectRequest:
        """A client's connect message."""
        return parse_connect_message(text)

    async def open(self, request: ConnectRequest) -> tuple[TargetConnection, str]:
        """Authenticate, take a token, pick an agent (retrying others) and open the target."""
        gateway = self.gateway
        key = gateway.keys.lookup(request.api_key)
        if key is None:
            raise SessionError(Outcome.AUTH_FAILED, "Invalid or missing API key")
        if not await gateway.limiter.acquire(key):
            raise SessionError(Outcome.RATE_LIMITED, "Rate limit exceeded")
        return await gateway.agents.open(request)

    def error_text(self, error: SessionError) -> str:
        """The protocol's ``error`` message."""
        return error_message(error.message)


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


async def _connect_request(front: Front, client: Hop) -> ConnectRequest | None:
    """The validated connect request from the query string or the first message."""
    timeout = front.server.connect_timeout
    try:
        from_query = front.query_request()
        if from_query is not None:
            return from_query
        text: str | None = None
        with trio.move_on_after(timeout):
            text = await _read_connect_message(client, front.server.max_connect_message_size)
            if text is None:
                return None
            return front.parse(text)
        raise SessionError(
            Outcome.CONNECT_TIMEOUT, f"No connect message within {timeout:g} seconds"
        )
    except InputError as exc:
        raise SessionError(Outcome.BAD_REQUEST, str(exc)) from None


async def _open_target(front: Front, request: ConnectRequest) -> tuple[Hop, str, int, bool]:
    """Open the target through the front; its hop, node_id, status, idle handled there."""
    connection, node_id = await front.open(request)
    target = Hop(
        "target",
        connection.stream,
        is_target=True,
        max_message_size=front.server.max_message_size,
        pending=connection.trailing,
    )
    return target, node_id, connection.status, connection.idle_handled


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


async def _refuse(front: Front, client: Hop, error: SessionError, grace: float) -> None:
    """Tell the client why there is no session, then close with the mapped code."""
    with trio.move_on_after(grace):
        try:
            if client.close_received is None and not client.lost:
                await client.send_frame(TEXT, front.error_text(error).encode())
        except trio.BrokenResourceError:
            client.lost = True
    await _close_hop(client, error.close_code, error.message, True, grace)


async def run_session(
    gateway: Gateway, stream: trio.abc.Stream, *, query: str, pending: bytes
) -> None:
    """Serve one ``/ws`` client whose WebSocket handshake has completed on ``stream``."""
    await serve_session(GatewayFront(gateway, query), stream, pending=pending)


async def serve_session(front: Front, stream: trio.abc.Stream, *, pending: bytes) -> None:
    """Serve one client of ``front`` whose WebSocket handshake has completed on ``stream``."""
    config = front.server
    client = Hop(
        "client", stream, is_target=False, max_message_size=config.max_message_size, pending=pending
    )
    stats = front.stats
    stats.sessions_started += 1
    stats.sessions_active += 1
    started = time.monotonic()
    outcome = Outcome.CLOSED
    node_id = "-"
    target: Hop | None = None
    try:
        try:
            request = await _connect_request(front, client)
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
            target, node_id, status, idle_handled = await _open_target(front, request)
            if request.send_connected:
                await client.send_frame(TEXT, connected_message(node_id, status).encode())
        except SessionError as error:
            outcome = error.outcome
            await _refuse(front, client, error, config.close_timeout)
            return
        except trio.BrokenResourceError:
            outcome = Outcome.CLIENT_LOST
            await client.aclose()
            if target is not None:
                await target.aclose()
            return
        # Where the far end (a remote agent) keeps the idle deadline, one clock is enough.
        idle_timeout = 0.0 if idle_handled else request.idle_timeout
        ending = await relay_frames(
            client, target, idle_timeout=idle_timeout, close_timeout=config.close_timeout
        )
        outcome = Outcome.CLOSED if ending is None else ending.outcome
        await _end_relay(client, target, ending, config.close_timeout)
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
            if target is not None:
                await target.aclose()
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
