"""WebSocket close codes by name, and the one place where session outcomes become them.

Closes relayed from one side to the other are forwarded byte for byte and
never pass through here; this module decides only the closes the relay itself
originates.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "MESSAGE_TOO_BIG",
    "NORMAL",
    "POLICY_VIOLATION",
    "PROTOCOL_ERROR",
    "TRY_AGAIN_LATER",
    "CloseCode",
    "Outcome",
    "SessionError",
    "code_for",
    "echo_code",
    "reason_for",
]


class CloseCode(enum.IntEnum):
    """The close codes the relay itself sends (RFC 6455 section 7.4.1, IANA registry).

    Codes relayed from a peer are forwarded as the integers they are.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


NORMAL = CloseCode.NORMAL
GOING_AWAY = CloseCode.GOING_AWAY
PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
INTERNAL_ERROR = CloseCode.INTERNAL_ERROR
TRY_AGAIN_LATER = CloseCode.TRY_AGAIN_LATER

# Codes that describe a condition and must never appear in a close frame.
_NOT_ON_WIRE = frozenset({1004, 1005, 1006, 1015})


class Outcome(enum.Enum):
    """Why a session ended (or never started); the value is a stable label for logs."""

    BAD_REQUEST = "bad_request"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_TOO_BIG = "connect_too_big"
    TARGET_NOT_ALLOWED = "target_not_allowed"
    OVER_CAPACITY = "over_capacity"
    KEY_SESSION_LIMIT = "key_session_limit"
    NO_AGENT = "no_agent"
    TARGET_FAILED = "target_failed"
    AGENT_FAILED = "agent_failed"
    CLIENT_PROTOCOL_ERROR = "client_protocol_error"
    TARGET_PROTOCOL_ERROR = "target_protocol_error"
    MESSAGE_TOO_BIG = "message_too_big"
    CLIENT_LOST = "client_lost"
    TARGET_LOST = "target_lost"
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"
    SEND_STALLED = "send_stalled"  # a side accepted no byte for send_stall_timeout
    KEY_REVOKED = "key_revoked"  # a reload revoked the key and the operator ended its sessions
    CLOSED = "closed"  # a close handshake relayed end to end


_CLIENT_CODE: dict[Outcome, CloseCode] = {
    Outcome.BAD_REQUEST: POLICY_VIOLATION,
    Outcome.AUTH_FAILED: POLICY_VIOLATION,
    Outcome.RATE_LIMITED: POLICY_VIOLATION,
    Outcome.CONNECT_TIMEOUT: POLICY_VIOLATION,
    Outcome.CONNECT_TOO_BIG: MESSAGE_TOO_BIG,
    Outcome.TARGET_NOT_ALLOWED: POLICY_VIOLATION,
    Outcome.OVER_CAPACITY: TRY_AGAIN_LATER,
    Outcome.KEY_SESSION_LIMIT: POLICY_VIOLATION,
    Outcome.NO_AGENT: INTERNAL_ERROR,
    Outcome.TARGET_FAILED: INTERNAL_ERROR,
    Outcome.AGENT_FAILED: INTERNAL_ERROR,
    Outcome.CLIENT_PROTOCOL_ERROR: PROTOCOL_ERROR,
    Outcome.TARGET_PROTOCOL_ERROR: INTERNAL_ERROR,
    Outcome.MESSAGE_TOO_BIG: MESSAGE_TOO_BIG,
    Outcome.CLIENT_LOST: INTERNAL_ERROR,
    Outcome.TARGET_LOST: INTERNAL_ERROR,
    Outcome.IDLE_TIMEOUT: NORMAL,
    Outcome.SHUTDOWN: GOING_AWAY,
    Outcome.SEND_STALLED: INTERNAL_ERROR,
    Outcome.KEY_REVOKED: POLICY_VIOLATION,
}

# The target only ever hears from the relay once a session is relaying.
_TARGET_CODE: dict[Outcome, CloseCode] = {
    Outcome.CLIENT_PROTOCOL_ERROR: INTERNAL_ERROR,
    Outcome.TARGET_PROTOCOL_ERROR: PROTOCOL_ERROR,
    Outcome.MESSAGE_TOO_BIG: MESSAGE_TOO_BIG,
    Outcome.CLIENT_LOST: INTERNAL_ERROR,
    Outcome.TARGET_LOST: INTERNAL_ERROR,
    Outcome.IDLE_TIMEOUT: NORMAL,
    Outcome.SHUTDOWN: GOING_AWAY,
    Outcome.SEND_STALLED: INTERNAL_ERROR,
}


def code_for(outcome: Outcome, *, to_target: bool) -> CloseCode:
    """The close code the relay sends for ``outcome`` to the client or the target."""
    table = _TARGET_CODE if to_target else _CLIENT_CODE
    return table.get(outcome, INTERNAL_ERROR)


_REASON: dict[Outcome, str] = {
    Outcome.MESSAGE_TOO_BIG: "message too big",
    Outcome.CLIENT_LOST: "client connection lost",
    Outcome.TARGET_LOST: "target connection lost",
    Outcome.IDLE_TIMEOUT: "idle timeout",
    Outcome.SHUTDOWN: "server shutting down",
    Outcome.CLIENT_PROTOCOL_ERROR: "client protocol error",
    Outcome.TARGET_PROTOCOL_ERROR: "target protocol error",
}


def reason_for(outcome: Outcome, *, to_target: bool, detail: str = "") -> str:
    """The close reason sent with :func:`code_for`'s code.

    The side at fault in a protocol error hears the specific ``detail``.
    """
    at_fault = (outcome is Outcome.CLIENT_PROTOCOL_ERROR and not to_target) or (
        outcome is Outcome.TARGET_PROTOCOL_ERROR and to_target
    )
    if at_fault and detail:
        return detail
    return _REASON.get(outcome, detail)


def echo_code(code: int | None) -> int | None:
    """The code that answers a peer's close when the other side cannot.

    An empty close is answered empty; a code that may not be on the wire is
    itself a protocol error.
    """
    if code is None:
        return None
    if code in _NOT_ON_WIRE or not (1000 <= code <= 4999) or 1016 <= code <= 2999:
        return PROTOCOL_ERROR
    return code


@attrs.define
class SessionError(Exception):
    """A session that cannot go on; the client gets ``message`` as an error, then a close."""

    outcome: Outcome
    message: str
    status: int | None = None  # the target's HTTP status, when it answered one

    def __str__(self) -> str:
        return self.message

    @property
    def close_code(self) -> CloseCode:
        """The close code the client receives."""
        return code_for(self.outcome, to_target=False)
