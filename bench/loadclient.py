"""The load generator's WebSocket client connection.

One :class:`Conn` per connection, as a bare asyncio protocol (no coroutine per
message): it does the upgrade, optionally the relay connect message, and then only
counts complete messages by scanning frame headers — payloads are skipped, never
copied. Outgoing messages are pre-encoded once per run and sent in batches: each
read that completes k echoes is answered with one write of k frames.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from array import array
from typing import Any, cast
from urllib.parse import urlsplit

from bench.tls import client_context, describe
from bench.wsframes import CLOSE, PING, apply_mask, client_request, encode_frame, parse_header

__all__ = ["Conn", "ConnectError", "Endpoint", "open_conn"]


class ConnectError(Exception):
    """The upgrade or the relay's connect step failed."""


class Endpoint:
    """Where and how to connect: a ws:// or wss:// URL plus an optional connect message;
    ``ca_file`` is trusted besides the system's CAs (the bench's test CA)."""

    def __init__(
        self, url: str, connect: dict[str, Any] | None, ca_file: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.netloc = parts.netloc
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.ssl: ssl.SSLContext | None = client_context(ca_file) if parts.scheme == "wss" else None
        self.connect_frame = (
            encode_frame(0x1, json.dumps(connect).encode(), masked=True) if connect else None
        )


# Close 1000, masked with a zero key (RFC 6455 allows any key; the payload is not secret).
_CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"


class Conn(asyncio.Protocol):
    """A client connection whose data phase counts echoed messages."""

    def __init__(self, endpoint: Endpoint, coalesce: bool = False) -> None:
        self.endpoint = endpoint
        self.coalesce = coalesce
        self.request, self.accept = client_request(endpoint.netloc, endpoint.path)
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.state = "http"
        self.buf = bytearray()
        self.partial = b""
        self.skip = 0
        self.skip_counts = 0
        self.count = 0
        self.closed = False
        # Pipelining: resend one batch slice per read; latency: timestamp each echo.
        self.batch: memoryview | None = None
        self.frame_len = 0
        self.window = 0
        self.samples: array[int] | None = None
        self.t_sent = 0
        self.tls: str | None = None  # "TLSv1.3 TLS_AES_128_GCM_SHA256" on wss://

    # -- connection set-up -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.tls = describe(transport.get_extra_info("ssl_object"))
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail set-up if it was still under way."""
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectError(f"connection closed during set-up ({exc})"))

    def _fail(self, message: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectError(message))
        if self.transport is not None:
            self.transport.abort()

    def _ready(self, node_id: str) -> None:
        self.state = "run"
        # The opener may have given up (timeout, cancelled run) while bytes were in flight.
        if self.ready.done():
            self.stop()
        else:
            self.ready.set_result(node_id)

    def _handshake(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1")
        rest = bytes(self.buf[end + 4 :])
        self.buf.clear()
        status = head.split("\r\n", 1)[0]
        if " 101 " not in f"{status} ":
            self._fail(f"upgrade refused: {status!r}")
            return
        if self.accept not in head:
            self._fail("bad Sec-WebSocket-Accept")
            return
        if self.endpoint.connect_frame is None:
            self._ready("")
            if rest:
                self._data(rest)
            return
        assert self.transport is not None
        self.transport.write(self.endpoint.connect_frame)
        self.state = "connect"
        if rest:
            self.buf += rest
            self._connect_reply()

    def _connect_reply(self) -> None:
        header = parse_header(self.buf, 0)
        if header is None:
            return
        _, head, mask, length = header
        if len(self.buf) < head + length:
            return
        payload = bytes(self.buf[head : head + length])
        if mask:
            payload = apply_mask(payload, mask)
        rest = bytes(self.buf[head + length :])
        self.buf.clear()
        try:
            reply = json.loads(payload)
        except ValueError:
            self._fail(f"connect reply is not JSON: {payload[:80]!r}")
            return
        if not isinstance(reply, dict) or reply.get("type") != "connected":
            detail = reply.get("message") if isinstance(reply, dict) else reply
            self._fail(f"relay refused: {detail}")
            return
        self._ready(str(reply.get("node_id", "")))
        if rest:
            self._data(rest)

    def data_received(self, data: bytes) -> None:
        """Route bytes to the set-up step in progress or to the message counter."""
        if self.state == "run":
            self._data(data)
            return
        self.buf += data
        if self.state == "http":
            self._handshake()
        elif self.state == "connect":
            self._connect_reply()

    # -- data phase ----------------------------------------------------------------------
    def _scan(self, data: bytes) -> int:
        """Complete messages (FIN data frames) in ``data``; skips payloads."""
        n = len(data)
        pos = 0
        done = 0
        if self.skip:
            if self.skip > n:
                self.skip -= n
                return 0
            pos = self.skip
            done = self.skip_counts
            self.skip = 0
        if self.partial:
            data = self.partial + data[pos:]
            self.partial = b""
            n = len(data)
            pos = 0
        while pos < n:
            if n - pos < 2:
                self.partial = data[pos:]
                break
            first = data[pos]
            length = data[pos + 1]
            if length < 126:  # the common small-frame case without a function call
                head = 2
            else:
                header = parse_header(data, pos)
                if header is None:
                    self.partial = data[pos:]
                    break
                _, head, _, length = header
            end = pos + head + length
            if first & 0x08:
                if end > n:
                    self.partial = data[pos:]
                    break
                self._control(first & 0x0F, data[pos + head : end])
                pos = end
                continue
            counts = first >> 7
            if end > n:
                self.skip = end - n
                self.skip_counts = counts
                break
            done += counts
            pos = end
        return done

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == PING:
            self.transport.write(encode_frame(0xA, payload, masked=True))
        elif opcode == CLOSE:
            self.closed = True
            self.transport.abort()

    def _data(self, data: bytes) -> None:
        k = self._scan(data)
        if not k:
            return
        self.count += k
        if self.samples is not None:
            now = time.perf_counter_ns()
            self.samples.append(now - self.t_sent)
            self.t_sent = now
        if self.batch is not None:
            self._send(k)

    def _send(self, k: int) -> None:
        assert self.transport is not None
        assert self.batch is not None
        if not self.coalesce:
            # One write per message, as WebSocket libraries do: the relay sees the
            # segment pattern of ordinary clients, not batches the bench made up.
            frame = self.batch[: self.frame_len]
            for _ in range(k):
                self.transport.write(frame)
            return
        while k > 0:
            step = min(k, self.window)
            self.transport.write(self.batch[: step * self.frame_len])
            k -= step

    def start_pipeline(self, frame: bytes, window: int) -> None:
        """Put ``window`` copies of ``frame`` in flight and keep them there."""
        assert self.transport is not None
        self.frame_len = len(frame)
        self.window = window
        self.batch = memoryview(frame * window)
        self._send(window)

    def start_ping_pong(self, frame: bytes, samples: array[int]) -> None:
        """One message in flight; the time of each round trip goes into ``samples``."""
        assert self.transport is not None
        self.frame_len = len(frame)
        self.window = 1
        self.batch = memoryview(frame)
        self.samples = samples
        self.t_sent = time.perf_counter_ns()
        self.transport.write(frame)

    def stop(self, graceful: bool = False) -> None:
        """Stop sending; close with a close frame (``graceful``) or abort."""
        self.batch = None
        self.samples = None
        if self.transport is None or self.closed:
            return
        if graceful:
            self.transport.write(_CLOSE_FRAME)
            self.transport.close()
        else:
            self.transport.abort()


SETUP_TIMEOUT = 10.0


async def open_conn(endpoint: Endpoint, coalesce: bool = False) -> Conn:
    """Connect, upgrade and (for relays) pass the connect step; raises ConnectError.
    ``coalesce``: answer k echoes with one write of k frames instead of k writes."""
    loop = asyncio.get_running_loop()
    conn = Conn(endpoint, coalesce)
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            await loop.create_connection(
                lambda: conn,
                endpoint.host,
                endpoint.port,
                ssl=endpoint.ssl,
                server_hostname=endpoint.host if endpoint.ssl else None,
            )
            await conn.ready
    except (OSError, TimeoutError) as exc:
        if conn.transport is not None:
            conn.transport.abort()
        raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
    return conn
