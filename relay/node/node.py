"""``relay agent``: an egress node that gateways reach over an authenticated WebSocket.

It is the gateway's session machinery behind a different front door:
``/agent`` takes a gateway's link (``Authorization: Bearer <token>``, checked
before the upgrade, in constant time), reads the request the gateway
validated, dials it from here — directly or through this node's own upstream
proxy, under this node's ``[targets]`` policy — and relays frames as an
ordinary session whose client is the gateway.  ``/agent/health`` answers the
gateway's health checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import ssl
from functools import partial

import attrs
import h11
import trio

from relay.agents.base import Agent
from relay.agents.factory import build_agent
from relay.agents.remote import keep_link_alive
from relay.config import NodeConfig, ServerConfig, valid_ip
from relay.converter import check, loads_json, structure
from relay.dataplane.hop import RECEIVE_SIZE, Hop, adopt_socket
from relay.dial import TargetConnection
from relay.gateway import dial_settings
from relay.listener import read_request_head
from relay.registry import SessionRegistry
from relay.session import Session, serve_session
from relay.targets import Resolver, system_resolver
from relay.wire.closecodes import NORMAL, SessionError
from relay.wire.connect import ConnectRequest, parse_connect_message
from relay.wire.frames import TEXT, FrameReader
from relay.wire.handshake import HandshakeError, is_upgrade, server_accept, server_reject

__all__ = ["HEALTH_PATH", "LINK_PATH", "Node", "NodeAddress", "handle_link", "serve_node"]

log = logging.getLogger("relay.node")

LINK_PATH = "/agent"
HEALTH_PATH = "/agent/health"


@attrs.frozen
class NodeAddress:
    """Where an agent listens, as given to ``task_status.started()``."""

    host: str
    port: int
    secure: bool = False

    @property
    def url(self) -> str:
        """The link URL a gateway's ``[[agents]] url`` names."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.secure else 'ws'}://{host}:{self.port}{LINK_PATH}"


@attrs.define(kw_only=True)
class Node(SessionRegistry):
    """The shared state of one agent process."""

    config: NodeConfig
    egress: Agent
    token_digest: bytes = attrs.field(repr=False)
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, config: NodeConfig, *, resolver: Resolver = system_resolver) -> Node:
        """Build the node; raises ``ValueError`` without a token."""
        settings = config.agent
        digest = settings.token_digest
        if digest is None:
            raise ValueError("a token is required (--token, RELAY_AGENT_TOKEN or [agent] token)")
        tls: ssl.SSLContext | None = None
        if settings.tls_cert is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(settings.tls_cert, settings.tls_key)
            except (OSError, ssl.SSLError) as exc:
                detail = getattr(exc, "strerror", None) or exc
                raise ValueError(
                    f"cannot load TLS certificate {settings.tls_cert}: {detail}"
                ) from None
        egress = build_agent(settings.egress(), dial_settings(config, resolver))
        return cls(config=config, egress=egress, token_digest=digest, tls=tls)

    @property
    def node_id(self) -> str:
        """The node_id this node answers with (the gateway reports its own configured one)."""
        return self.egress.node_id

    def authorized(self, header: bytes | None) -> bool:
        """Whether ``Authorization`` carries this node's token (constant time)."""
        scheme, _, token = (header or b"").partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        return hmac.compare_digest(digest, self.token_digest) and scheme.lower() == b"bearer"

    def identity(self) -> dict[str, object]:
        """What the health endpoint says about this node (no secrets)."""
        return {
            "type": "healthy",
            "slug": self.egress.slug,
            "country": self.egress.country,
            "node_id": self.node_id,
            "sessions_active": self.stats.sessions_active,
        }


@attrs.frozen
class LinkExtras:
    """The link message's fields beyond the connect message's."""

    source_address: str | None = attrs.field(
        default=None, validator=check(valid_ip, "must be an IP address")
    )


@attrs.define
class NodeFront:
    """The ``/agent`` front door for one session: the gateway is the client."""

    node: Node
    source_address: str | None = None

    @property
    def server(self) -> ServerConfig:
        """This node's ``[server]`` settings."""
        return self.node.config.server

    @property
    def registry(self) -> SessionRegistry:
        """The node itself."""
        return self.node

    def query_request(self) -> ConnectRequest | None:
        """Links always send their request as the first message."""
        return None

    def parse(self, text: str) -> ConnectRequest:
        """The gateway's request, validated again here: this is where the dial happens."""
        request = parse_connect_message(text, self.server.connect_limits)
        extras = structure(loads_json(text, what="link message"), LinkExtras, what="link message")
        self.source_address = extras.source_address
        return request

    async def open(self, request: ConnectRequest, session: Session) -> TargetConnection:
        """Dial from this node (bound to the gateway's ``source_address`` if it sent one)."""
        egress = self.node.egress
        if self.source_address is not None:
            egress = attrs.evolve(egress, source_address=self.source_address)  # type: ignore[misc]
        session.agent, session.node_id = egress.slug, self.node.node_id
        return await egress.open(request)

    def error_text(self, error: SessionError) -> str:
        """The error with its outcome and HTTP status, so the gateway can act on it."""
        return json.dumps(
            {
                "type": "error",
                "message": error.message,
                "outcome": error.outcome.value,
                "status": error.status,
            }
        )


async def _answer_health(node: Node, stream: trio.abc.Stream, pending: bytes) -> None:
    """Say who this node is, close, and wait briefly for the close answer."""
    server = node.config.server
    hop = Hop("gateway", stream, is_target=False, max_message_size=RECEIVE_SIZE, pending=pending)
    with trio.move_on_after(server.close_timeout):
        try:
            await hop.send_frame(TEXT, json.dumps(node.identity()).encode())
            await hop.send_close(NORMAL, "")
            await hop.await_close(FrameReader(from_client=True, max_frame=RECEIVE_SIZE))
        except trio.BrokenResourceError:
            return


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


async def _reject(stream: trio.abc.Stream, conn: h11.Connection, status: int, text: str) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(server_reject(conn, status, text))


async def _route(node: Node, stream: trio.abc.Stream) -> None:
    server = node.config.server
    if node.tls is not None:
        tls = trio.SSLStream(stream, node.tls, server_side=True)
        done = False
        with trio.move_on_after(server.handshake_timeout):
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return
            done = True
        if not done:
            return
        stream = tls
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_request_head)
    request: h11.Request | None = None
    raw = b""
    with trio.move_on_after(server.handshake_timeout):
        request, raw = await read_request_head(stream, conn)
    if request is None:
        if raw:
            await _reject(stream, conn, 400, "Bad request")
        return
    path = request.target.decode("latin-1").partition("?")[0]
    if path not in (LINK_PATH, HEALTH_PATH):
        await _reject(stream, conn, 404, f"This is a relay agent; gateways connect to {LINK_PATH}")
        return
    if not is_upgrade(request):
        await _reject(stream, conn, 426, f"{path} is a WebSocket endpoint")
        return
    if not node.authorized(_header(request, b"authorization")):
        log.warning("refused a link without the right token")
        await _reject(stream, conn, 401, "A valid Authorization: Bearer token is required")
        return
    try:
        response = server_accept(conn, request)
    except HandshakeError as exc:
        await _reject(stream, conn, exc.status or 400, str(exc))
        return
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    trailing = bytes(conn.trailing_data[0])
    if path == HEALTH_PATH:
        await _answer_health(node, stream, trailing)
    else:
        # A plain (non-TLS) link takes the pumps' direct-socket path.
        stream, sock = adopt_socket(stream)
        await serve_session(NodeFront(node), stream, pending=trailing, sock=sock)


async def handle_link(node: Node, stream: trio.abc.Stream) -> None:
    """Serve one accepted connection; never raises (one link cannot harm another)."""
    try:
        keep_link_alive(stream)
        await _route(node, stream)
    except Exception:
        log.exception("link handler failed")
    finally:
        await trio.aclose_forcefully(stream)


async def serve_node(
    config: NodeConfig,
    *,
    node: Node | None = None,
    task_status: trio.TaskStatus[NodeAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an agent until cancelled; ``task_status`` gets the bound address."""
    if node is None:
        node = Node.from_config(config)
    server = config.server
    listeners = await trio.open_tcp_listeners(server.port, host=server.host)
    sockname = listeners[0].socket.getsockname()
    address = NodeAddress(str(sockname[0]), int(sockname[1]), node.tls is not None)
    log.info("relay agent listening on %s", address.url)
    task_status.started(address)
    await trio.serve_listeners(partial(handle_link, node), listeners)
