"""The ``GET /ws/docs`` document, generated from the classes that validate input."""

from __future__ import annotations

from typing import Any

import attrs

from relay.converter import wire_name
from relay.wire.closecodes import (
    GOING_AWAY,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    NORMAL,
    POLICY_VIOLATION,
    PROTOCOL_ERROR,
    TRY_AGAIN_LATER,
)
from relay.wire.connect import ConnectMessage

__all__ = ["protocol_document"]

_TYPE_NAMES: dict[object, str] = {
    str: "string",
    str | None: "string",
    float: "float",
    dict[str, str]: "object",
}


def _connect_fields() -> list[dict[str, Any]]:
    fields = []
    for field in attrs.fields(attrs.resolve_types(ConnectMessage)):
        doc = field.metadata.get("doc")
        if doc is None:
            continue
        default: Any = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        required = default is attrs.NOTHING
        fields.append(
            {
                "name": wire_name(ConnectMessage, field.name),
                "type": _TYPE_NAMES[field.type],
                "required": required or field.metadata.get("required", False),
                "default": None if required else default,
                "description": doc,
            }
        )
    return fields


def protocol_document(ws_url: str, node_id: str) -> dict[str, Any]:
    """The protocol description served at ``/ws/docs``.

    The first four keys are the shape the protocol's reference deployment
    answers with; ``protocol`` holds the full description.
    """
    return {
        "type": "connected",
        "status": 101,
        "node_id": node_id,
        "message": f"This is a documentation endpoint. Connect via WebSocket at {ws_url}",
        "protocol": {
            "websocket_url": ws_url,
            "connect_message": {
                "format": "JSON text frame, sent first, within the connect timeout",
                "fields": _connect_fields(),
                "query_string_form": (
                    f"{ws_url}?apiKey=KEY&url=<percent-encoded>&geo=..&agent=..&idle_timeout=.."
                    "&header=Name:%20value&cookie=name=value&connected=true|false"
                ),
            },
            "responses": {
                "connected": {
                    "type": "connected",
                    "status": "int: HTTP status of the target's upgrade (101)",
                    "node_id": "string: the agent that dialed the target",
                },
                "error": {"type": "error", "message": "string: what went wrong"},
            },
            "relayed_frames": "after connected, frames pass raw both ways: text stays text, "
            "binary stays binary",
            "close_codes": {
                str(NORMAL): "normal closure (either side closed; idle timeout)",
                str(GOING_AWAY): "the gateway is shutting down",
                str(PROTOCOL_ERROR): "a frame broke the WebSocket protocol",
                str(POLICY_VIOLATION): "invalid API key, bad connect message, rate limited, "
                "too many sessions for the key, connect timeout, target not allowed",
                str(MESSAGE_TOO_BIG): "a message over the size limit",
                str(INTERNAL_ERROR): "agent failure, target unreachable, or a connection lost",
                str(TRY_AGAIN_LATER): "the gateway is at capacity: try again later",
                "other": "a close from the client or the target is forwarded with its own "
                "code and reason",
            },
            "rate_limiting": "each validated connect message takes one token from the API "
            "key's bucket; an empty bucket is an error and close 1008",
        },
    }
