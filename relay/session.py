"""One relay session, from the client's 101 to both connections closed.

The session owns everything it opens: the connect deadline, the target
connection, the pumps (in :func:`relay.dataplane.pumps.relay_frames`) and the closing.
Nothing raised here leaves the session except cancellation.

The same machinery serves two front doors (:class:`Front`): the gateway's
``/ws`` (API key, token bucket, agent choice) and a ``relay agent``'s
``/agent`` link, whose client is a gateway (relay/node/node.py).
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
import time
from typing import Any, Protocol

import trio

from relay.config import ServerConfig
from relay.converter import InputError
from relay.dataplane.closing import close_hop, end_relay, refuse
from relay.dataplane.hop import Hop
from relay.dataplane.pumps import Ending, RelayWatch, relay_frames
from relay.dial import TargetConnection
from relay.logs import fields
from relay.registry import SessionRegistry
from relay.slots import SessionClaim
from relay.wire.closecodes import CloseCode, Outcome, SessionError, echo_code
from relay.wire.connect import (
    ConnectRequest,
    connected_message,
)
from relay.wire.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Frame,
    FrameReader,
    Violation,
    parse_close_payload,
)

__all__ = ["Front", "Session", "new_session", "serve_session"]

log = logging.getLogger("relay.session")


class Front(Protocol):
    """What differs between the session's front doors."""

    @property
    def server(self) -> ServerConfig:
        """Timeouts and size limits of this process."""
        ...

    @property
    def registry(self) -> SessionRegistry:
        """Where this session is registered and counted."""
        ...

    def query_request(self) -> ConnectRequest | None:
        """A request given without a connect message (the query string), if any."""
        ...

    def parse(self, text: str) -> ConnectRequest:
        """The connect message's text as a request; raises :class:`InputError`."""
        ...

    async def open(self, request: ConnectRequest, session: Session) -> TargetConnection:
        """Admit the request and open its target; sets ``session``'s key and agent."""
        ...

    def error_text(self, error: SessionError) -> str:
        """The text frame that tells the client why there is no session."""
        ...


async def _read_connect_message(client: Hop, max_size: int) -> str | None:
    """The connect message's text; None if the client closed or left first.

    The relay is the client's endpoint until the target is connected, so it
    answers pings and a close here itself.
    """
    reader = FrameReader(from_client=True, max_frame=max_size)
    reader.feed(client.pending)
    client.pending = b""
    try:
        return await _assemble_connect_message(client, reader, max_size)
    finally:
        # However this ends — the message, a refusal, the connect deadline or
        # a shutdown cancelling the read — bytes after the last whole frame go
        # back to the hop: the close that follows must find the client's
        # answer from the right offset.
        client.pending = reader.take_buffered()


async def _assemble_connect_message(client: Hop, reader: FrameReader, max_size: int) -> str | None:
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
                Outcome.CONNECT_TOO_BIG
                if item.code is CloseCode.MESSAGE_TOO_BIG
                else Outcome.CLIENT_PROTOCOL_ERROR
            )
            raise SessionError(outcome, _connect_violation(item, max_size))
        frame: Frame = item
        if frame.opcode == PING:
            await client.send_frame(PONG, frame.payload)
            continue
        if frame.opcode == PONG:
            continue
        if frame.opcode == CLOSE:
            client.peer_closed(parse_close_payload(frame.payload))
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
            try:
                return b"".join(parts).decode("utf-8")
            except UnicodeDecodeError:
                raise SessionError(
                    Outcome.BAD_REQUEST, "The connect message is not valid UTF-8"
                ) from None


def _connect_violation(violation: Violation, max_size: int) -> str:
    if violation.code is CloseCode.MESSAGE_TOO_BIG:
        return f"The connect message is over {max_size} bytes"
    return f"Protocol error: {violation.reason}"


async def _connect_request(
    front: Front, client: Hop, scope: trio.CancelScope
) -> ConnectRequest | None:
    """The validated connect request from the query string or the first message.

    The connect deadline is the connect phase's own scope's (one scope for the
    phase, not one more per session): it is set for the read and lifted after
    it; the session reports a scope cancelled by it as a connect timeout.
    """
    server = front.server
    try:
        from_query = front.query_request()
        if from_query is not None:
            return from_query
        scope.deadline = trio.current_time() + server.connect_timeout
        try:
            text = await _read_connect_message(client, server.max_connect_message_size)
        finally:
            scope.deadline = math.inf
        if text is None:
            return None
        return front.parse(text)
    except InputError as exc:
        raise SessionError(Outcome.BAD_REQUEST, str(exc)) from None


def _check_capacity(front: Front) -> None:
    # Counted from the handshake on (this session included), so the connect
    # phase counts too; refused before any connect message is read.
    if len(front.registry.sessions) > front.server.max_sessions:
        raise SessionError(Outcome.OVER_CAPACITY, "Server at capacity, try again later")


class Session:
    """One relay session, registered with its front's registry from start to end.

    The registration is what ``/metrics`` reads live traffic from and what a
    graceful shutdown closes with 1001.
    """

    __slots__ = (
        "_scope",
        "_shutting_down",
        "_watch",
        "agent",
        "claim",
        "client",
        "front",
        "id",
        "key_id",
        "node_id",
        "outcome",
        "started",
        "target",
        "target_host",
    )

    def __init__(self, front: Front, client: Hop) -> None:
        self.id = secrets.token_hex(6)
        self.front = front
        self.client = client
        self.target: Hop | None = None
        self.claim: SessionClaim | None = None
        self.started = time.monotonic()
        self.key_id = self.agent = self.node_id = self.target_host = "-"
        self.outcome = Outcome.CLOSED
        self._scope: trio.CancelScope | None = None
        self._watch: RelayWatch | None = None
        self._shutting_down = False

    def traffic(self) -> tuple[int, int, int, int]:
        """Bytes and frames relayed so far, each direction (see relay.metrics)."""
        client, target = self.client, self.target
        if target is None:
            return (0, 0, 0, 0)
        incoming, outgoing = client.incoming, target.incoming
        return (incoming.forwarded, outgoing.forwarded, incoming.frames, outgoing.frames)

    def end(self, outcome: Outcome, detail: str = "") -> bool:
        """End a relaying session with ``outcome``'s closes (``detail`` the reason where
        the outcome has none of its own); False if it is not relaying yet."""
        if self._watch is None:
            return False
        self._watch.finish(Ending(outcome, detail))
        return True

    def shutdown(self) -> None:
        """End the session with 1001 to both sides (or refuse it, if not yet connected)."""
        self._shutting_down = True
        if self._watch is not None:
            self._watch.finish(Ending(Outcome.SHUTDOWN))
        elif self._scope is not None:
            self._scope.cancel()

    def _relaying(self, watch: RelayWatch) -> None:
        self._watch = watch
        if self.claim is not None and self.claim.key_id is not None:
            # A held session slot must not expire while the session relays.
            watch.nursery.start_soon(self.claim.keep_alive)
        if self._shutting_down:
            watch.finish(Ending(Outcome.SHUTDOWN))

    async def run(self) -> None:
        """Serve the session to its end; nothing but cancellation escapes."""
        registry = self.front.registry
        registry.session_started(self)
        try:
            await self._run()
        finally:
            if self._holds_anything():
                with trio.CancelScope(shield=True):
                    await self.client.aclose()
                    if self.target is not None:
                        await self.target.aclose()
                    if self.claim is not None:
                        await self.claim.release()
            for side, hop in (("client", self.client), ("target", self.target)):
                if hop is not None and hop.close_sent:
                    registry.metrics.close_sent(side, hop.sent_close_code)
                if hop is not None and hop.close_was_skipped:
                    registry.metrics.closes_skipped.labels(side).inc()
            registry.session_ended(self)
            self._log_end()

    def _holds_anything(self) -> bool:
        """Whether a connection or a session slot is still held (usually not: the
        closing has closed both hops), so the shielded release has work to do."""
        target, claim = self.target, self.claim
        return (
            not self.client.closed
            or (target is not None and not target.closed)
            or (claim is not None and claim.key_id is not None)
        )

    async def _run(self) -> None:
        front = self.front
        server = front.server
        client = self.client
        metrics = front.registry.metrics
        request: ConnectRequest | None = None
        error: SessionError | None = None
        idle_handled = False
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                _check_capacity(front)
                request = await _connect_request(front, client, scope)
                if request is None:
                    await self._client_left(server.close_timeout)
                    return
                self.target_host = request.target.host
                started = trio.current_time()
                connection = await front.open(request, self)
                metrics.dial_seconds.observe(trio.current_time() - started)
                idle_handled = connection.idle_handled
                self.target = Hop(
                    "target",
                    connection.stream,
                    is_target=True,
                    max_message_size=server.max_message_size,
                    pending=connection.trailing,
                    sock=connection.sock,
                    stall_timeout=server.send_stall_timeout,
                )
                if request.send_connected:
                    message = connected_message(self.node_id, connection.status)
                    await client.send_frame(TEXT, message.encode())
        except SessionError as exc:
            error = exc
        except trio.BrokenResourceError:
            self.outcome = Outcome.CLIENT_LOST
            metrics.connect_outcome(self.outcome.value)
            return
        self._scope = None
        if error is None and scope.cancelled_caught and not self._shutting_down:
            # Only two things cancel the connect phase: a shutdown, and the
            # connect message's deadline (see _connect_request).
            timeout = server.connect_timeout
            error = SessionError(
                Outcome.CONNECT_TIMEOUT, f"No connect message within {timeout:g} seconds"
            )
        if error is None and self._shutting_down:
            error = SessionError(Outcome.SHUTDOWN, "Server shutting down")
        if error is not None:
            self.outcome = error.outcome
            metrics.connect_outcome(error.outcome.value)
            await refuse(client, error, front.error_text(error), server.close_timeout)
            return
        metrics.connect_outcome("connected")
        target = self.target
        assert target is not None
        assert request is not None
        # Where the far end (a remote agent) keeps the idle deadline, one clock is enough.
        idle_timeout = 0.0 if idle_handled else request.idle_timeout
        # The request and the dial's result are done with: a relaying session
        # keeps nothing it does not need (its headers may be kilobytes).
        del request, connection
        ending = await relay_frames(
            client,
            target,
            idle_timeout=idle_timeout,
            close_timeout=server.close_timeout,
            on_start=self._relaying,
        )
        self.outcome = Outcome.CLOSED if ending is None else ending.outcome
        await end_relay(client, target, ending, server.close_timeout)

    async def _client_left(self, grace: float) -> None:
        client = self.client
        closed = client.close_received
        self.outcome = Outcome.CLOSED if closed is not None else Outcome.CLIENT_LOST
        self.front.registry.metrics.connect_outcome(self.outcome.value)
        code = echo_code(closed.code) if closed is not None else None
        await close_hop(client, code, "", closed is not None, grace)

    def _log_end(self) -> None:
        client, target = self.client, self.target
        if client.close_was_skipped or (target is not None and target.close_was_skipped):
            skipped = [
                hop.name for hop in (client, target) if hop is not None and hop.close_was_skipped
            ]
            # Owed a close, disconnected without one: a frame to it was left unfinished.
            log.warning("session %s: no close frame to %s", self.id, " and ".join(skipped))
        if log.isEnabledFor(logging.INFO):
            # Its fields are gathered only for a line that will be written.
            log.info("session end", extra=self._log_fields())

    def _log_fields(self) -> dict[str, Any]:
        client, target = self.client, self.target
        return fields(
            session=self.id,
            key=self.key_id,
            agent=self.agent,
            node=self.node_id,
            target_host=self.target_host,
            outcome=self.outcome.value,
            close_to_client=client.sent_close_code if client.close_sent else None,
            close_to_target=(
                target.sent_close_code if target is not None and target.close_sent else None
            ),
            duration_s=round(time.monotonic() - self.started, 3),
            bytes_from_client=client.incoming.forwarded,
            bytes_from_target=target.incoming.forwarded if target is not None else 0,
        )


def new_session(
    front: Front,
    stream: trio.abc.Stream,
    *,
    pending: bytes,
    sock: socket.socket | None = None,
) -> Session:
    """A session for one client of ``front`` whose WebSocket handshake has completed
    on ``stream`` (``sock``: its socket, when it is plain TCP); ``await .run()`` it.

    Built apart from running so the caller awaits ``run()`` directly: every
    coroutine frame between the handler and the session is kept for the
    session's whole life.
    """
    client = Hop(
        "client",
        stream,
        is_target=False,
        max_message_size=front.server.max_message_size,
        pending=pending,
        sock=sock,
        stall_timeout=front.server.send_stall_timeout,
    )
    return Session(front, client)


async def serve_session(
    front: Front,
    stream: trio.abc.Stream,
    *,
    pending: bytes,
    sock: socket.socket | None = None,
) -> None:
    """Serve one client of ``front`` to the end (see :func:`new_session`)."""
    await new_session(front, stream, pending=pending, sock=sock).run()
