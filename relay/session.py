"""One relay session, from the client's 101 to both connections closed.

The session owns everything it opens: the connect deadline, the target
connection, the pumps (in :func:`relay.pumps.relay_frames`) and the closing.
Nothing raised here leaves the session except cancellation.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from typing import Any

import trio

from relay.closecodes import Outcome, SessionError, echo_code
from relay.closing import close_hop, end_relay, refuse
from relay.converter import InputError
from relay.frames import (
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
from relay.gateway import Gateway
from relay.hop import Hop
from relay.logs import fields
from relay.protocol import (
    ConnectRequest,
    connected_message,
    parse_connect_message,
    parse_connect_query,
)
from relay.pumps import Ending, RelayWatch, relay_frames
from relay.ratelimit import LimitsUnavailable
from relay.slots import SessionClaim

__all__ = ["Session", "run_session"]

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
    try:
        from_query = parse_connect_query(query)
        if from_query is not None:
            return from_query
        text: str | None = None
        with trio.move_on_after(timeout):
            text = await _read_connect_message(
                client, gateway.config.server.max_connect_message_size
            )
            if text is None:
                return None
            return parse_connect_message(text)
        raise SessionError(
            Outcome.CONNECT_TIMEOUT, f"No connect message within {timeout:g} seconds"
        )
    except InputError as exc:
        raise SessionError(Outcome.BAD_REQUEST, str(exc)) from None


class Session:
    """One relay session, registered with its gateway from start to end.

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
        "gateway",
        "id",
        "key_id",
        "node_id",
        "outcome",
        "started",
        "target",
        "target_host",
    )

    def __init__(self, gateway: Gateway, client: Hop) -> None:
        self.id = secrets.token_hex(6)
        self.gateway = gateway
        self.claim = SessionClaim(gateway.slots, session_id=self.id)
        self.client = client
        self.target: Hop | None = None
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

    def shutdown(self) -> None:
        """End the session with 1001 to both sides (or refuse it, if not yet connected)."""
        self._shutting_down = True
        if self._watch is not None:
            self._watch.finish(Ending(Outcome.SHUTDOWN))
        elif self._scope is not None:
            self._scope.cancel()

    def _relaying(self, watch: RelayWatch) -> None:
        self._watch = watch
        if self.claim.key_id is not None:
            # A held session slot must not expire while the session relays.
            watch.nursery.start_soon(self.claim.keep_alive)
        if self._shutting_down:
            watch.finish(Ending(Outcome.SHUTDOWN))

    async def run(self, query: str) -> None:
        """Serve the session to its end; nothing but cancellation escapes."""
        gateway = self.gateway
        gateway.session_started(self)
        try:
            await self._run(query)
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()
                if self.target is not None:
                    await self.target.aclose()
                await self.claim.release()
            for side, hop in (("client", self.client), ("target", self.target)):
                if hop is not None and hop.close_sent:
                    gateway.metrics.close_sent(side, hop.sent_close_code)
            gateway.session_ended(self)
            log.info("session end", extra=self._log_fields())

    async def _run(self, query: str) -> None:
        gateway = self.gateway
        config = gateway.config.server
        client = self.client
        metrics = gateway.metrics
        request: ConnectRequest | None = None
        error: SessionError | None = None
        try:
            with trio.CancelScope() as self._scope:
                request = await _connect_request(gateway, client, query)
                if request is None:
                    await self._client_left(config.close_timeout)
                    return
                status = await self._open_target(request)
                if request.send_connected:
                    await client.send_frame(TEXT, connected_message(self.node_id, status).encode())
        except SessionError as exc:
            error = exc
        except trio.BrokenResourceError:
            self.outcome = Outcome.CLIENT_LOST
            metrics.connects.labels(self.outcome.value).inc()
            return
        self._scope = None
        if error is None and self._shutting_down:
            error = SessionError(Outcome.SHUTDOWN, "Server shutting down")
        if error is not None:
            self.outcome = error.outcome
            metrics.connects.labels(error.outcome.value).inc()
            await refuse(client, error, config.close_timeout)
            return
        metrics.connects.labels("connected").inc()
        target = self.target
        assert target is not None
        assert request is not None
        ending = await relay_frames(
            client,
            target,
            idle_timeout=request.idle_timeout,
            close_timeout=config.close_timeout,
            on_start=self._relaying,
        )
        self.outcome = Outcome.CLOSED if ending is None else ending.outcome
        await end_relay(client, target, ending, config.close_timeout)

    async def _client_left(self, grace: float) -> None:
        client = self.client
        closed = client.close_received
        self.outcome = Outcome.CLOSED if closed is not None else Outcome.CLIENT_LOST
        self.gateway.metrics.connects.labels(self.outcome.value).inc()
        code = echo_code(closed.code) if closed is not None else None
        await close_hop(client, code, "", closed is not None, grace)

    async def _open_target(self, request: ConnectRequest) -> int:
        """Authenticate, take a token, pick an agent and open the target."""
        gateway = self.gateway
        self.target_host = request.target.host
        key = gateway.keys.lookup(request.api_key)
        if key is None:
            raise SessionError(Outcome.AUTH_FAILED, "Invalid or missing API key")
        self.key_id = key.key_id
        try:
            if not await gateway.limiter.acquire(key):
                gateway.metrics.rate_limited.inc()
                raise SessionError(Outcome.RATE_LIMITED, "Rate limit exceeded")
            if not await self.claim.claim(key):
                raise SessionError(
                    Outcome.OVER_CAPACITY, "Too many concurrent sessions for this API key"
                )
        except LimitsUnavailable:
            # A shared limits backend that fails closed: come back later (1013).
            raise SessionError(
                Outcome.OVER_CAPACITY, "Rate limiter unavailable, try again later"
            ) from None
        agent = gateway.agents.choose(request)
        self.agent, self.node_id = agent.slug, agent.node_id
        dial_started = trio.current_time()
        connection = await agent.open(request)
        gateway.metrics.dial_seconds.observe(trio.current_time() - dial_started)
        self.target = Hop(
            "target",
            connection.stream,
            is_target=True,
            max_message_size=gateway.config.server.max_message_size,
            pending=connection.trailing,
            sock=connection.sock,
        )
        return connection.status

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


async def run_session(
    gateway: Gateway,
    stream: trio.abc.Stream,
    *,
    query: str,
    pending: bytes,
    sock: socket.socket | None = None,
) -> None:
    """Serve one client whose WebSocket handshake has completed on ``stream``
    (``sock``: its socket, when it is plain TCP)."""
    client = Hop(
        "client",
        stream,
        is_target=False,
        max_message_size=gateway.config.server.max_message_size,
        pending=pending,
        sock=sock,
    )
    await Session(gateway, client).run(query)
