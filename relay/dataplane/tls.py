"""TLS on a hop's raw socket: an ``ssl.SSLObject`` and two ``MemoryBIO``s, driven
the way the plain path drives the socket.

Measured (docs/performance.md, "TLS on the hops"): through ``trio.SSLStream``
a pump ran once per TLS record (at most 16 KiB; one record per message at
32 B), each time through Trio's stream layers, a send lock and a 16 KiB
``SSL_write``. With TLS on both hops that cost 214 µs of relay CPU per 32 B
message against nginx's 21, and 18.5 ms per MiB against 3.7; the same work
driven here cost 31 µs and 5.5 ms in a prototype. So:

- a read takes up to 256 KiB of ciphertext in one ``recv`` and returns the
  plaintext of every record it completed, in one piece;
- a write encrypts the whole relayed chunk and sends the ciphertext with the
  plain path's single ``send`` (``Hop.send_bytes`` does it: a write cut short
  keeps its ciphertext for ``Hop.flush``, as on plain TCP);
- received ciphertext goes into the incoming BIO before anything can be
  cancelled, so no byte is lost to cancellation here either.

:class:`TLSStream` is the same connection as a Trio stream, for everything that
runs before the pumps (the target's upgrade exchange); a
:class:`~relay.dataplane.hop.Hop` given one takes its socket and
:class:`TLSWire` and uses them directly.
"""

from __future__ import annotations

import socket
import ssl

import trio

from relay.dataplane.sockets import MAX_RECEIVE_SIZE, RECEIVE_SIZE, adopt_socket

__all__ = ["TLSStream", "TLSWire", "open_tls"]


class TLSWire:
    """One connection's TLS state: plaintext in, ciphertext out, and back."""

    __slots__ = ("_incoming", "_object", "_outgoing")

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The TLS session (ALPN, peer certificate, cipher)."""
        return self._object

    def feed(self, ciphertext: bytes) -> None:
        """Bytes received from the socket; ``b""`` for its end."""
        if ciphertext:
            self._incoming.write(ciphertext)
        else:
            self._incoming.write_eof()

    def handshake_step(self) -> bool:
        """Advance the handshake; True once done (then :meth:`outgoing` may hold
        its last flight).  Raises ``ssl.SSLError`` on a failed handshake."""
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def decrypt(self, limit: int) -> bytes | None:
        """Plaintext of every complete record received, up to ``limit`` bytes;
        None when more ciphertext is needed, ``b""`` at the peer's end (a
        ``close_notify``, or EOF without one: relays treat both alike)."""
        read = self._object.read
        parts: list[bytes] = []
        total = 0
        while total < limit:
            try:
                chunk = read(limit - total)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:  # close_notify, ragged EOF, a bad record
                if parts:
                    break  # the end is reported on the next call
                return b""
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """The ciphertext to send for ``plaintext`` (with anything else the
        session has queued, e.g. an answer to a key update)."""
        if plaintext:
            self._object.write(plaintext)
        return self._outgoing.read()

    def outgoing(self) -> bytes:
        """Ciphertext queued without a write (handshake flights, key updates)."""
        return self._outgoing.read()


class TLSStream(trio.abc.Stream):
    """A TLS connection on a plain socket, as a Trio stream (see the module doc)."""

    def __init__(self, transport: trio.SocketStream, sock: socket.socket, wire: TLSWire) -> None:
        self.transport_stream = transport  # as on SSLStream (relay/keepalive.py looks here)
        self.sock = sock
        self.wire = wire

    # -- trio.abc.Stream ----------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Plaintext; ``b""`` once the peer has gone."""
        limit = max_bytes or RECEIVE_SIZE
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            data = self.wire.decrypt(limit)
            if data is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            self.wire.feed(await _recv(self.sock))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data``."""
        await _send(self.sock, self.wire.encrypt(data))

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more."""
        await trio.lowlevel.wait_writable(self.sock)

    async def aclose(self) -> None:
        """Close the socket (no ``close_notify``: the relay closes WebSockets, not TLS)."""
        # Through Trio's socket: it wakes any task still waiting on the
        # descriptor, whose number the system may hand to the next connection.
        self.transport_stream.socket.close()
        await trio.lowlevel.checkpoint()


async def _recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(MAX_RECEIVE_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc


async def _send(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc


async def _handshake(sock: socket.socket, wire: TLSWire) -> None:
    while not wire.handshake_step():
        await _send(sock, wire.outgoing())
        received = await _recv(sock)
        if not received:
            raise trio.BrokenResourceError("the peer left during the TLS handshake")
        wire.feed(received)
    await _send(sock, wire.outgoing())


async def open_tls(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
) -> trio.abc.Stream:
    """The TLS handshake on ``stream``; a :class:`TLSStream` when ``stream`` is plain
    TCP, else (a proxy's stream, an in-memory one) a ``trio.SSLStream``.

    Raises ``trio.BrokenResourceError`` (its cause the ``ssl.SSLError``) when the
    handshake fails or the peer leaves; the caller still owns ``stream`` then.
    """
    if type(stream) is not trio.SocketStream:
        tls = trio.SSLStream(
            stream,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            https_compatible=server_side,
        )
        await tls.do_handshake()
        return tls
    transport, sock = adopt_socket(stream)
    assert isinstance(transport, trio.SocketStream)
    assert sock is not None
    wire = TLSWire(context, server_side=server_side, server_hostname=server_hostname)
    try:
        await _handshake(sock, wire)
    except ssl.SSLError as exc:
        transport.socket.close()  # the caller's ``stream`` no longer holds the descriptor
        raise trio.BrokenResourceError(str(exc)) from exc
    except BaseException:
        transport.socket.close()
        raise
    return TLSStream(transport, sock, wire)
