"""The gateway's one listener: each connection's request head, then its route.

The request head is taken under every bound by :mod:`relay.request_head`
(shared with ``relay agent``); then ``GET /ws`` upgrades go to a relay
session on the raw stream and everything else is replayed into the
Hypercorn-served ASGI app.
"""

from __future__ import annotations

import logging
import ssl

import trio

from relay.dataplane.hop import adopt_socket
from relay.gateway import Gateway, GatewayFront
from relay.httpserver import AsgiServer, ReplayStream
from relay.keepalive import hop_keepalive
from relay.request_head import RequestHead, take_request_head
from relay.session import new_session

__all__ = ["RELAY_PATH", "handle_connection"]

log = logging.getLogger("relay.listener")

RELAY_PATH = "/ws"


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
        server = gateway.config.server
        hop_keepalive(stream, server.tcp_keepalive)
        head = await take_request_head(stream, server, gateway.capacity, tls)
        if head is None:
            return
        stream = head.stream
        upgraded = await _route(gateway, http, head)
        # The request's parsing state is gone by now: a long session keeps
        # only what it needs, and this frame holds nothing but the session.
        del head
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


async def _route(gateway: Gateway, http: AsgiServer, head: RequestHead) -> tuple[str, bytes] | None:
    """Serve non-relay requests; for a ``/ws`` upgrade, answer 101 and return the
    query string and the bytes already read past the request head."""
    if head.path != RELAY_PATH:
        await http.serve_connection(ReplayStream(head.stream, head.raw))
        return None
    if not head.is_upgrade:
        await head.reject(426, f"{RELAY_PATH} is a WebSocket endpoint; see {RELAY_PATH}/docs")
        return None
    if gateway.draining:
        await head.reject(503, "The gateway is shutting down")
        return None
    trailing = await head.accept_upgrade()
    if trailing is None:
        return None
    return head.query, trailing
