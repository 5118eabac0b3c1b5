"""One connection's state and request handling, independent of the transport.

:meth:`Session.handle` takes one received message and returns the response
envelope; it raises nothing but cancellation, so no request can end the
connection.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from parser_api.config import ParserConfig
from parser_api.harvest import Harvester
from parser_api.protocol import (
    ACTIONS,
    PROTOCOL,
    Configure,
    EmptyPayload,
    ProtocolError,
    RequestEnvelope,
    error_response,
    ok_response,
    parse_configure,
    protocol_reference,
    utc_ts,
)
from parser_api.sources import SourceFactory, UpstreamError
from relay.converter import InputError, loads_json, structure

__all__ = ["Session"]

log = logging.getLogger("parser_api.session")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Session:
    """A connection's configuration, de-duplication set and ``stats.me`` counters."""

    def __init__(self, config: ParserConfig, sources: SourceFactory, *, conn_id: str) -> None:
        self.config = config
        self.sources = sources
        self.conn_id = conn_id
        # The connection's client session id upstream (Depop's depop-session-id).
        self.client_session_id = str(uuid.uuid4())
        self.connected_since = utc_ts()
        self.configured: Configure | None = None
        self.harvester: Harvester | None = None
        # Keys of every item sent on this connection, across reconfigurations.
        self.seen: set[tuple[str, str]] = set()
        self.requests: Counter[str] = Counter()
        self.batches = 0
        self.items_sent = 0
        self.errors = 0
        self._handlers: dict[str, Handler] = {
            "parser.configure": self._configure,
            "parser.fetch": self._fetch,
            "stats.me": self._stats,
            "ping": self._ping,
            "help": self._help,
        }
        assert set(self._handlers) == set(ACTIONS)

    def greeting(self) -> dict[str, Any]:
        """The ``connected`` message sent once the connection is accepted."""
        return ok_response("connected", {"conn_id": self.conn_id, "protocol": PROTOCOL})

    async def handle(self, message: str | bytes) -> dict[str, Any]:
        """Answer one received message (text or binary frame)."""
        action = "error"
        try:
            data = self._decode(message)
            raw_action = data.get("action") if isinstance(data, dict) else None
            action = raw_action[:100] if isinstance(raw_action, str) else "error"
            envelope = self._envelope(data)
            return await self._handlers[envelope.action](envelope.payload)
        except ProtocolError as error:
            self.errors += 1
            return error_response(action, error)
        except Exception:
            log.exception("conn %s: unexpected error in %s", self.conn_id, action)
            self.errors += 1
            return error_response(action, ProtocolError("internal_error", "internal server error"))

    def _decode(self, message: str | bytes) -> object:
        """The message's JSON value, after the frame type and size checks."""
        limit = self.config.max_message_size
        if isinstance(message, bytes):
            self.requests["(invalid)"] += 1
            raise ProtocolError("bad_request", "binary frames are not accepted; send JSON text")
        if len(message) > limit or len(message.encode("utf-8", "surrogatepass")) > limit:
            self.requests["(invalid)"] += 1
            raise ProtocolError("message_too_large", f"message is larger than {limit} bytes")
        try:
            return loads_json(message, what="message")
        except InputError as exc:
            self.requests["(invalid)"] += 1
            raise ProtocolError("bad_json", str(exc)) from None

    def _envelope(self, data: object) -> RequestEnvelope:
        try:
            envelope = structure(data, RequestEnvelope, what="request")
        except InputError as exc:
            self.requests["(invalid)"] += 1
            raise ProtocolError("bad_request", str(exc)) from None
        if envelope.action not in ACTIONS:
            self.requests["(invalid)"] += 1
            known = ", ".join(ACTIONS)
            raise ProtocolError(
                "unknown_action", f"unknown action {envelope.action[:100]!r}; known: {known}"
            )
        self.requests[envelope.action] += 1
        return envelope

    def _no_payload(self, action: str, payload: dict[str, Any]) -> None:
        try:
            structure(payload, EmptyPayload, what=f"{action} payload")
        except InputError as exc:
            raise ProtocolError("invalid_payload", str(exc)) from None

    async def _configure(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            request = parse_configure(payload, max_batch=self.config.max_batch)
        except InputError as exc:
            raise ProtocolError("invalid_payload", str(exc)) from None
        self.configured = request
        self.harvester = self.sources.harvester(request, session_id=self.client_session_id)
        return ok_response("parser.configure", {"configured": attrs.asdict(request)})

    async def _fetch(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._no_payload("parser.fetch", payload)
        if self.configured is None or self.harvester is None:
            raise ProtocolError("not_configured", "send parser.configure before parser.fetch")
        room = self.config.max_items_per_session - len(self.seen)
        size = min(self.configured.batch_size, max(room, 0))
        items: tuple[Any, ...] = ()
        exhausted = True
        if size > 0:
            try:
                with trio.fail_after(self.config.fetch_timeout):
                    batch = await self.harvester.next_batch(size, self.seen)
            except trio.TooSlowError:
                raise ProtocolError(
                    "upstream_timeout", f"fetch took longer than {self.config.fetch_timeout:g} s"
                ) from None
            except UpstreamError as error:
                extra: dict[str, Any] = {}
                if error.status is not None:
                    extra["upstream_status"] = error.status
                if error.retry_after is not None:
                    extra["retry_after"] = error.retry_after
                raise ProtocolError(error.code, error.message, **extra) from None
            items = batch.items
            exhausted = (
                batch.exhausted or len(self.seen) + len(items) >= self.config.max_items_per_session
            )
        self.seen.update(item.key for item in items)
        self.batches += 1
        self.items_sent += len(items)
        log.info(
            "conn %s: %s fetch, %d items, %d upstream pages so far, exhausted=%s",
            self.conn_id,
            self.configured.parser_type,
            len(items),
            self.harvester.counters.pages,
            exhausted,
        )
        return ok_response(
            "parser.fetch",
            {
                "parser_type": self.configured.parser_type,
                "count": len(items),
                "items": [item.to_json() for item in items],
                "exhausted": exhausted,
            },
        )

    async def _stats(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._no_payload("stats.me", payload)
        upstream = attrs.asdict(self.harvester.counters) if self.harvester else None
        return ok_response(
            "stats.me",
            {
                "conn_id": self.conn_id,
                "connected_since": self.connected_since,
                "requests": dict(sorted(self.requests.items())),
                "requests_total": sum(self.requests.values()),
                "batches": self.batches,
                "items_sent": self.items_sent,
                "errors": self.errors,
                "parser_type": self.configured.parser_type if self.configured else None,
                "exhausted": self.harvester.exhausted if self.harvester else None,
                "upstream": upstream,
            },
        )

    async def _ping(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._no_payload("ping", payload)
        return ok_response("pong", {"pong": True})

    async def _help(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._no_payload("help", payload)
        return ok_response(
            "help",
            protocol_reference(
                max_batch=self.config.max_batch,
                max_connections=self.config.max_connections,
                max_message_size=self.config.max_message_size,
            ),
        )
