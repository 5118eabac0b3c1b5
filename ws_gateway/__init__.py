"""Python SDK for the gateway's parser WebSocket API.

``from ws_gateway.client import GatewayClient``
"""

from ws_gateway.client import GatewayClient
from ws_gateway.errors import (
    AuthenticationError,
    ConnectionClosedError,
    GatewayError,
    HandshakeError,
    NotConfiguredError,
    RequestError,
    ServerBusyError,
    UpstreamError,
)

__all__ = [
    "AuthenticationError",
    "ConnectionClosedError",
    "GatewayClient",
    "GatewayError",
    "HandshakeError",
    "NotConfiguredError",
    "RequestError",
    "ServerBusyError",
    "UpstreamError",
]
