"""The SDK's exceptions: one base class, a subclass per thing a caller may handle."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConnectionClosedError",
    "GatewayError",
    "HandshakeError",
    "NotConfiguredError",
    "RequestError",
    "ServerBusyError",
    "UpstreamError",
    "closed_error",
    "request_error",
]

UNAUTHORIZED = 4401
TRY_AGAIN_LATER = 1013


class GatewayError(Exception):
    """Anything that went wrong talking to the parser API."""


class HandshakeError(GatewayError):
    """The server answered the WebSocket upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"WebSocket upgrade refused with HTTP {status}")
        self.status = status
        self.body = body


class ConnectionClosedError(GatewayError):
    """The connection closed (``code`` 1006 when it was lost without a close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class AuthenticationError(ConnectionClosedError):
    """Close code 4401: the admin token is missing or wrong."""


class ServerBusyError(ConnectionClosedError):
    """Close code 1013: the server's connection limit is reached; try again later."""


def closed_error(code: int | None, reason: str) -> ConnectionClosedError:
    """The exception for a close with ``code``."""
    if code == UNAUTHORIZED:
        return AuthenticationError(code, reason)
    if code == TRY_AGAIN_LATER:
        return ServerBusyError(code, reason)
    return ConnectionClosedError(code, reason)


class RequestError(GatewayError):
    """An ``ok: false`` answer; ``code`` and ``message`` come from ``data.error``."""

    def __init__(self, action: str, code: str, message: str, response: dict[str, Any]) -> None:
        super().__init__(f"{action} failed: {code}: {message}")
        self.action = action
        self.code = code
        self.message = message
        self.response = response


class NotConfiguredError(RequestError):
    """``parser.fetch`` before ``parser.configure``."""


class UpstreamError(RequestError):
    """The marketplace failed (``upstream_*`` codes); the connection is still usable."""


def request_error(response: dict[str, Any]) -> RequestError:
    """The exception for an ``ok: false`` response."""
    data = response.get("data")
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code", "unknown"))
    message = str(error.get("message", ""))
    action = str(response.get("action", ""))
    if code == "not_configured":
        return NotConfiguredError(action, code, message, response)
    if code.startswith("upstream_"):
        return UpstreamError(action, code, message, response)
    return RequestError(action, code, message, response)
