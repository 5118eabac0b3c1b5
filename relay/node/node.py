"""``relay agent``'s shared state and its front door for one session.

It is the gateway's session machinery behind a different front door:
``/agent`` takes a gateway's link (``Authorization: Bearer <token>``, checked
before the upgrade, in constant time), reads the request the gateway
validated, dials it from here — directly or through this node's own upstream
proxy, under this node's ``[targets]`` policy — and relays frames as an
ordinary session whose client is the gateway.  ``/agent/health`` answers the
gateway's health checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl

import attrs

from relay.agents.base import Agent
from relay.agents.factory import build_agent
from relay.capacity import Capacity
from relay.config import NodeConfig, ServerConfig, valid_ip
from relay.converter import check, loads_json, structure
from relay.dial import TargetConnection
from relay.gateway import dial_settings
from relay.node.tokens import AcceptedTokens
from relay.registry import SessionRegistry
from relay.session import Session
from relay.targets import Resolver, system_resolver
from relay.wire.closecodes import SessionError
from relay.wire.connect import ConnectRequest, parse_connect_message

__all__ = ["HEALTH_PATH", "LINK_PATH", "LinkExtras", "Node", "NodeAddress", "NodeFront"]

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


@attrs.define(kw_only=True, eq=False)
class Node:
    """The shared state of one agent process."""

    config: NodeConfig
    egress: Agent
    tokens: AcceptedTokens = attrs.field(repr=False)
    tls: ssl.SSLContext | None = None
    registry: SessionRegistry = attrs.Factory(SessionRegistry)
    capacity: Capacity = attrs.field()

    @capacity.default
    def _capacity(self) -> Capacity:
        return Capacity(max_handshakes=self.config.server.max_handshakes)

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
        return cls(config=config, egress=egress, tokens=AcceptedTokens(digest), tls=tls)

    @property
    def node_id(self) -> str:
        """The node_id this node answers with (the gateway reports its own configured one)."""
        return self.egress.node_id

    def authorized(self, header: bytes | None) -> bool:
        """Whether ``Authorization`` carries a token this node accepts (constant time)."""
        scheme, _, token = (header or b"").partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        return self.tokens.accepts(digest) and scheme.lower() == b"bearer"

    def identity(self) -> dict[str, object]:
        """What the health endpoint says about this node (no secrets)."""
        return {
            "type": "healthy",
            "slug": self.egress.slug,
            "country": self.egress.country,
            "node_id": self.node_id,
            "sessions_active": self.registry.stats.sessions_active,
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
        """The node's live sessions."""
        return self.node.registry

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
