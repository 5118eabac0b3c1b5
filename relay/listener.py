"""The one listener: read each connection's request head, then route it.

``GET /ws`` upgrades go to a relay session on the raw stream; everything else
is replayed into the Hypercorn-served ASGI app.  A connection that sends no
complete request head within ``handshake_timeout``, or garbage, is closed
without disturbing anything else.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl

import h11
import trio

from relay.dataplane.hop import RECEIVE_SIZE, adopt_socket
from relay.gateway import Gateway, GatewayFront
from relay.httpserver import AsgiServer, ReplayStream
from relay.keepalive import hop_keepalive
from relay.session import new_session
from relay.wire.handshake import HandshakeError, is_upgrade, server_accept, server_reject

__all__ = ["RELAY_PATH", "handle_connection", "read_request_head"]

log = logging.getLogger("relay.listener")

RELAY_PATH = "/ws"
# A request line starts with a method token; anything else is refused at once.
_METHOD_PEEK = 16
_METHOD_PREFIX = re.compile(rb"^[A-Z]{1,15}( |$)")


async def read_request_head(
    stream: trio.abc.Stream, conn: h11.Connection
) -> tuple[h11.Request | None, bytes]:
    """Read until a whole request head; returns it (or None) and every byte read."""
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None, bytes(raw)
        if isinstance(event, h11.Request):
            return event, bytes(raw)
        if event is not h11.NEED_DATA:
            return None, bytes(raw)
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            return None, bytes(raw)
        raw += data
        if not _METHOD_PREFIX.match(raw[:_METHOD_PEEK]):
            return None, bytes(raw)  # not HTTP: no point waiting for a line end
        try:
            conn.receive_data(bytes(data))
        except h11.RemoteProtocolError:
            return None, bytes(raw)


def _unsupported(request: h11.Request) -> tuple[int, str] | None:
    """Requests that would turn a connection into a long-lived HTTP/2 one behind the
    router's back (prior knowledge, or an h2c upgrade): the gateway speaks HTTP/1.1."""
    if request.http_version not in (b"1.0", b"1.1"):
        return 505, "HTTP version not supported"
    for name, value in request.headers:
        if name == b"upgrade" and b"h2c" in value.lower():
            return 400, "h2c upgrades are not supported"
    return None


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def handle_connection(
    gateway: Gateway,
    http: AsgiServer,
    stream: trio.abc.Stream,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve one accepted connection; never raises (one connection cannot harm another).

    With ``tls``, the connection is TLS: ``wss://`` and ``https://`` share the port.
    """
    handed_over = False  # a session closes its own client
    try:
        hop_keepalive(stream, gateway.config.server.tcp_keepalive)
        if tls is not None:
            secured = await _tls_handshake(stream, tls, gateway.config.server.handshake_timeout)
            if secured is None:
                return
            stream = secured
        upgraded = await _route(gateway, http, stream)
        # The request's parsing state is gone by now: a long session keeps
        # only what it needs, and this frame holds nothing but the session.
        if upgraded is not None:
            stream, sock = adopt_socket(stream)
            session = new_session(
                GatewayFront(gateway, upgraded[0]), stream, pending=upgraded[1], sock=sock
            )
            handed_over = True
            del upgraded, sock
            await session.run()
    except Exception:
        log.exception("connection handler failed")
    finally:
        if not handed_over:
            await trio.aclose_forcefully(stream)


async def _tls_handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, within: float
) -> trio.SSLStream[trio.abc.Stream] | None:
    tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
    with trio.move_on_after(within):
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return None  # not TLS, or a failed handshake: nothing to answer
        return tls
    return None


async def _route(
    gateway: Gateway, http: AsgiServer, stream: trio.abc.Stream
) -> tuple[str, bytes] | None:
    """Serve non-relay requests; for a ``/ws`` upgrade, answer 101 and return the
    query string and the bytes already read past the request head."""
    config = gateway.config.server
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_request_head)
    request: h11.Request | None = None
    raw = b""
    capacity = gateway.capacity
    if not capacity.enter_handshake():
        log.debug("too many connections in their handshake: closing a new one")
        return None  # closed at once, before a byte is read
    try:
        with trio.move_on_after(config.handshake_timeout):
            request, raw = await read_request_head(stream, conn)
    finally:
        capacity.leave_handshake()
    if request is None:
        if raw:
            await _send_quietly(stream, server_reject(conn, 400, "Bad request"))
        return None
    # h11 bounds a head still incomplete; one that arrived whole in a single read is measured here.
    if len(raw) - len(conn.trailing_data[0]) > config.max_request_head:
        await _send_quietly(stream, server_reject(conn, 431, "Request header fields too large"))
        return None
    refused = _unsupported(request)
    if refused is not None:
        await _send_quietly(stream, server_reject(conn, *refused))
        return None
    path, _, query = request.target.decode("latin-1").partition("?")
    if path != RELAY_PATH:
        await http.serve_connection(ReplayStream(stream, raw))
        return None
    if not is_upgrade(request):
        message = f"{RELAY_PATH} is a WebSocket endpoint; see {RELAY_PATH}/docs"
        await _send_quietly(stream, server_reject(conn, 426, message))
        return None
    if gateway.draining:
        await _send_quietly(stream, server_reject(conn, 503, "The gateway is shutting down"))
        return None
    try:
        response = server_accept(conn, request)
    except HandshakeError as exc:
        await _send_quietly(stream, server_reject(conn, exc.status or 400, str(exc)))
        return None
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    trailing, _closed = conn.trailing_data
    return query, bytes(trailing)
