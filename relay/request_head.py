"""The steps every connection takes before anything routes it, for every listener.

The gateway's port and a ``relay agent``'s port (which the README has users
expose to the internet) take new connections through the same steps, in this
module only, so a bound enforced on one can never be missing on the other:

1. a place under the handshake cap (``[server] max_handshakes``): beyond it a
   new connection is closed at once, before a byte is read or a TLS handshake
   is spent on it;
2. the TLS handshake, when the port serves TLS;
3. the HTTP/1.x request head, within ``max_request_head`` bytes: parsed by a
   strict parser when it is of the common shape and whole in the first read,
   by h11 otherwise (relay/wire/httphead.py says why).

Steps 2 and 3 share one ``handshake_timeout`` deadline.  The answers the
router gives itself follow: 400 for a malformed head, 431 for one over the
size limit, 505 for HTTP/2 prior knowledge and 400 for an ``h2c`` upgrade (a
long-lived HTTP/2 connection would escape every bound here).  What comes
next — routes, tokens, keys — is the caller's.
"""

from __future__ import annotations

import contextlib
import re
import ssl

import attrs
import h11
import trio

from relay.capacity import Capacity
from relay.config import ServerConfig
from relay.dataplane.hop import RECEIVE_SIZE
from relay.wire.handshake import HandshakeError, is_upgrade, server_accept, server_reject
from relay.wire.httphead import parse_request

__all__ = ["RequestHead", "read_request_head", "send_quietly", "take_request_head"]

# A request line starts with a method token; anything else is refused at once.
_METHOD_PEEK = 16
_METHOD_PREFIX = re.compile(rb"^[A-Z]{1,15}( |$)")


@attrs.define(slots=True, eq=False)
class RequestHead:
    """A connection whose request head has been read and passed every bound.

    The head is parsed once: by the strict parser of :mod:`relay.wire.httphead`
    when it is of the common shape, else by h11 (``conn``).  h11's state is
    rebuilt from ``raw`` only when an answer other than the 101 needs it.
    """

    stream: trio.abc.Stream  # TLS-wrapped when the port serves TLS
    raw: bytes  # every byte read so far, for a replay into Hypercorn
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # names lower case, as h11 reports them
    trailing: bytes  # bytes read past the head
    max_request_head: int
    _conn: h11.Connection | None = None

    @classmethod
    def from_h11(
        cls,
        stream: trio.abc.Stream,
        raw: bytes,
        conn: h11.Connection,
        request: h11.Request,
        max_request_head: int,
    ) -> RequestHead:
        """A head h11 has parsed."""
        return cls(
            stream,
            raw,
            request.method,
            request.target,
            request.http_version,
            list(request.headers),
            bytes(conn.trailing_data[0]),
            max_request_head,
            conn,
        )

    @property
    def conn(self) -> h11.Connection:
        """h11's server state after this request: built here for a head h11 did not parse."""
        conn = self._conn
        if conn is None:
            conn = self._conn = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self.max_request_head
            )
            conn.receive_data(self.raw)
            conn.next_event()
        return conn

    @property
    def path(self) -> str:
        """The request target's path."""
        return self.target.decode("latin-1").partition("?")[0]

    @property
    def query(self) -> str:
        """The request target's query string (without ``?``)."""
        return self.target.decode("latin-1").partition("?")[2]

    @property
    def is_upgrade(self) -> bool:
        """Whether the request asks for a WebSocket upgrade."""
        return is_upgrade(self.headers)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return bytes(value)
        return None

    async def reject(self, status: int, text: str) -> None:
        """Answer with a short plain-text error; the caller then closes."""
        await send_quietly(self.stream, server_reject(self.conn, status, text))

    async def accept_upgrade(self) -> bytes | None:
        """Answer the WebSocket upgrade with 101 (or its error); the bytes already
        read past the head, or None when there is no WebSocket."""
        try:
            response = server_accept(self.method, self.headers)
        except HandshakeError as exc:
            await self.reject(exc.status or 400, str(exc))
            return None
        try:
            await self.stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return self.trailing


async def send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    """Send ``data`` unless the peer is already gone."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def take_request_head(
    stream: trio.abc.Stream,
    server: ServerConfig,
    capacity: Capacity,
    tls: ssl.SSLContext | None = None,
) -> RequestHead | None:
    """Steps 1-3 above; None when the connection was answered or dropped here
    (the caller closes ``stream`` either way)."""
    if not capacity.enter_handshake():
        return None  # closed at once, before a byte is read
    secured: trio.abc.Stream | None = None
    read: _Read | None = None
    try:
        try:
            with trio.move_on_after(server.handshake_timeout):
                if tls is not None:
                    # Trio's SSLStream: the served side does not take the pumps' own TLS
                    # path yet (relay/dataplane/tls.py; docs/performance.md says why).
                    secured = stream = trio.SSLStream(
                        stream, tls, server_side=True, https_compatible=True
                    )
                    try:
                        await secured.do_handshake()
                    except trio.BrokenResourceError:
                        return None  # not TLS, or a failed handshake: nothing to answer
                read = await _read_head(stream, server.max_request_head)
        finally:
            capacity.leave_handshake()
        head = await _judge(stream, read, server.max_request_head)
    except BaseException:
        if secured is not None:
            await trio.aclose_forcefully(secured)
        raise
    if head is None and secured is not None:
        # The TLS stream holds the socket now: the caller's ``stream`` no longer does.
        await trio.aclose_forcefully(secured)
    return head


@attrs.frozen
class _Read:
    """What the head's read produced, before it is judged."""

    head: RequestHead | None
    head_size: int
    raw: bytes
    conn: h11.Connection | None


async def _read_head(stream: trio.abc.Stream, limit: int) -> _Read:
    first = await _receive(stream)
    parsed = parse_request(first) if _METHOD_PREFIX.match(first[:_METHOD_PEEK]) else None
    if parsed is not None:
        # The common case: a plain head, whole in the first read.
        head = RequestHead(
            stream,
            first,
            parsed.method,
            parsed.target,
            parsed.http_version,
            parsed.headers,
            parsed.trailing,
            limit,
        )
        return _Read(head, parsed.head_size, first, None)
    # Everything else is h11's, fed exactly as before.
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limit)
    request, raw = await read_request_head(stream, conn, first)
    if request is None:
        return _Read(None, 0, raw, conn)
    head = RequestHead.from_h11(stream, raw, conn, request, limit)
    return _Read(head, len(raw) - len(head.trailing), raw, conn)


async def _judge(stream: trio.abc.Stream, read: _Read | None, limit: int) -> RequestHead | None:
    """The router's own answers (400, 431, 505, h2c); the head when none applies.
    ``read`` is None when the head did not arrive within the deadline."""
    if read is None:
        return None
    head = read.head
    if head is None:
        if read.raw:
            assert read.conn is not None  # a head the parser took is never refused as malformed
            await send_quietly(stream, server_reject(read.conn, 400, "Bad request"))
        return None
    if read.head_size > limit:
        # h11 bounds a head still incomplete; one that arrived whole in one read is measured here.
        await head.reject(431, "Request header fields too large")
        return None
    refused = _unsupported(head)
    if refused is not None:
        await head.reject(*refused)
        return None
    return head


async def _receive(stream: trio.abc.Stream) -> bytes:
    try:
        return bytes(await stream.receive_some(RECEIVE_SIZE))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def read_request_head(
    stream: trio.abc.Stream, conn: h11.Connection, first: bytes | None = None
) -> tuple[h11.Request | None, bytes]:
    """Read until a whole request head; returns it (or None) and every byte read.

    ``first``: the first read, already taken from ``stream``.
    """
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
        if first is not None:
            data, first = first, None
        else:
            data = await _receive(stream)
        if not data:
            return None, bytes(raw)
        raw += data
        if not _METHOD_PREFIX.match(raw[:_METHOD_PEEK]):
            return None, bytes(raw)  # not HTTP: no point waiting for a line end
        try:
            conn.receive_data(bytes(data))
        except h11.RemoteProtocolError:
            return None, bytes(raw)


def _unsupported(head: RequestHead) -> tuple[int, str] | None:
    """Requests that would turn a connection into a long-lived HTTP/2 one behind the
    router's back (prior knowledge, or an h2c upgrade): these ports speak HTTP/1.1."""
    if head.http_version not in (b"1.0", b"1.1"):
        return 505, "HTTP version not supported"
    for name, value in head.headers:
        if name == b"upgrade" and b"h2c" in value.lower():
            return 400, "h2c upgrades are not supported"
    return None
