"""What a TLS client sends first, recorded and fingerprinted (JA3, JA3N, JA4).

Tests that must prove *which* TLS client dialed (a browser-impersonating HTTP
client, a relay dialing targets) start a :class:`HelloRecorder` on 127.0.0.1,
point the client at it and compare fingerprints computed here from the raw
bytes, never from what the client library says about itself.

- :func:`parse_client_hello` turns the bytes of a TLS record (or several) that
  carry a ClientHello into a :class:`ClientHello`.
- :func:`ja3`, :func:`ja3n` and :func:`ja4` compute the fingerprints
  (``JA3`` string and MD5 as Salesforce defined it; ``JA3N`` the same with the
  extensions sorted, because Chrome shuffles their order on every connection;
  ``JA4`` as FoxIO's specification defines it, e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``).
- :class:`HelloRecorder` is a TLS server in a thread: it records each
  connection's ClientHello before any TLS processing, then either drops the
  connection (``certificate=None``) or completes the handshake with the given
  certificate (a ``trustme`` one in tests), offering only the ALPN protocols it
  is told to, reads one HTTP/1.1 request head (so the header order can be
  checked) and answers it with a fixed response.

Works from sync and Trio tests alike (the server runs in its own threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

import attrs

__all__ = [
    "ClientHello",
    "Connection",
    "HelloRecorder",
    "is_grease",
    "ja3",
    "ja3n",
    "ja4",
    "ja4_raw",
    "parse_client_hello",
]

# Extension type numbers the fingerprints look into.
EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_TLS_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


def is_grease(value: int) -> bool:
    """Whether ``value`` is a GREASE code point (RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@attrs.frozen
class ClientHello:
    """The parts of a ClientHello the fingerprints use, in the order they were sent."""

    legacy_version: int
    cipher_suites: tuple[int, ...]
    # (type, body) per extension, in wire order, GREASE included.
    extensions: tuple[tuple[int, bytes], ...]
    server_name: str | None
    alpn: tuple[bytes, ...]
    supported_groups: tuple[int, ...]
    ec_point_formats: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    supported_versions: tuple[int, ...]

    @property
    def extension_types(self) -> tuple[int, ...]:
        """Extension type numbers in wire order (GREASE included)."""
        return tuple(kind for kind, _ in self.extensions)

    def extension(self, kind: int) -> bytes | None:
        """The body of extension ``kind``, or None when absent."""
        return next((body for k, body in self.extensions if k == kind), None)


class _Reader:
    """Big-endian cursor over bytes; raises ValueError past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vector(self, length_size: int) -> bytes:
        length = self.u8() if length_size == 1 else self.u16()
        return self.take(length)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _u16_list(data: bytes) -> tuple[int, ...]:
    return tuple(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))


def handshake_message(records: bytes) -> bytes | None:
    """The first handshake message carried by TLS ``records``; None until all of it is there.

    Raises ValueError when the bytes are not TLS handshake records.
    """
    payload = b""
    pos = 0
    while pos + 5 <= len(records):
        kind, _version, length = struct.unpack("!BHH", records[pos : pos + 5])
        if kind != _HANDSHAKE:
            raise ValueError(f"not a TLS handshake record (content type {kind})")
        if pos + 5 + length > len(records):
            break
        payload += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(payload) >= 4:
            size = int.from_bytes(payload[1:4], "big")
            if len(payload) >= 4 + size:
                return payload[: 4 + size]
    return None


def parse_client_hello(data: bytes) -> ClientHello:
    """Parse a ClientHello from TLS records (``0x16 0x03 ...``) or a bare handshake message."""
    message = handshake_message(data) if data[:1] == bytes([_HANDSHAKE]) else data
    if message is None:
        raise ValueError("incomplete ClientHello")
    head = _Reader(message)
    if head.u8() != _CLIENT_HELLO:
        raise ValueError("not a ClientHello")
    body = _Reader(head.take(head.u24()))
    legacy_version = body.u16()
    body.take(32)  # random
    body.vector(1)  # legacy session id
    ciphers = _u16_list(body.vector(2))
    body.vector(1)  # compression methods
    extensions: list[tuple[int, bytes]] = []
    if not body.done:
        block = _Reader(body.vector(2))
        while not block.done:
            kind = block.u16()
            extensions.append((kind, block.vector(2)))
    found = dict(extensions)
    return ClientHello(
        legacy_version=legacy_version,
        cipher_suites=ciphers,
        extensions=tuple(extensions),
        server_name=_server_name(found.get(EXT_SERVER_NAME)),
        alpn=_alpn(found.get(EXT_ALPN)),
        supported_groups=_u16_list(_Reader(found[EXT_SUPPORTED_GROUPS]).vector(2))
        if EXT_SUPPORTED_GROUPS in found
        else (),
        ec_point_formats=tuple(_Reader(found[EXT_EC_POINT_FORMATS]).vector(1))
        if EXT_EC_POINT_FORMATS in found
        else (),
        signature_algorithms=_u16_list(_Reader(found[EXT_SIGNATURE_ALGORITHMS]).vector(2))
        if EXT_SIGNATURE_ALGORITHMS in found
        else (),
        supported_versions=_u16_list(_Reader(found[EXT_SUPPORTED_VERSIONS]).vector(1))
        if EXT_SUPPORTED_VERSIONS in found
        else (),
    )


def _server_name(body: bytes | None) -> str | None:
    if body is None:
        return None
    names = _Reader(_Reader(body).vector(2))
    while not names.done:
        kind = names.u8()
        name = names.vector(2)
        if kind == 0:  # host_name
            return name.decode("ascii", "replace")
    return None


def _alpn(body: bytes | None) -> tuple[bytes, ...]:
    if body is None:
        return ()
    protocols = _Reader(_Reader(body).vector(2))
    found = []
    while not protocols.done:
        found.append(protocols.vector(1))
    return tuple(found)


def _dashed(values: Sequence[int]) -> str:
    return "-".join(str(v) for v in values if not is_grease(v))


def ja3(hello: ClientHello) -> tuple[str, str]:
    """The JA3 string and its MD5: ``version,ciphers,extensions,groups,point formats``.

    Decimal values, ``-`` separated, GREASE values removed, in wire order.
    """
    return _ja3(hello, [kind for kind, _ in hello.extensions])


def ja3n(hello: ClientHello) -> tuple[str, str]:
    """JA3 with the extension types sorted: stable across Chrome's per-connection shuffle."""
    return _ja3(hello, sorted(kind for kind, _ in hello.extensions))


def _ja3(hello: ClientHello, extensions: Sequence[int]) -> tuple[str, str]:
    text = ",".join(
        [
            str(hello.legacy_version),
            _dashed(hello.cipher_suites),
            _dashed(extensions),
            _dashed(hello.supported_groups),
            _dashed(hello.ec_point_formats),
        ]
    )
    return text, hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _hex4(values: Sequence[int]) -> str:
    return ",".join(f"{v:04x}" for v in values)


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def _alnum(byte: int) -> bool:
    return chr(byte).isascii() and chr(byte).isalnum()


def _ja4_a(hello: ClientHello, transport: str) -> str:
    versions = [v for v in hello.supported_versions if not is_grease(v)]
    version = _TLS_VERSIONS.get(max(versions) if versions else hello.legacy_version, "00")
    sni = "d" if hello.extension(EXT_SERVER_NAME) is not None else "i"
    ciphers = [c for c in hello.cipher_suites if not is_grease(c)]
    extensions = [k for k, _ in hello.extensions if not is_grease(k)]
    alpn = "00"
    if hello.alpn and hello.alpn[0]:
        first = hello.alpn[0]
        if _alnum(first[0]) and _alnum(first[-1]):
            alpn = chr(first[0]) + chr(first[-1])
        else:  # the spec's rule for non-alphanumeric ALPN bytes: hex digits instead
            digits = first.hex()
            alpn = digits[0] + digits[-1]
    return (
        f"{transport}{version}{sni}{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn}"
    )


def ja4_raw(hello: ClientHello, *, transport: str = "t") -> str:
    """JA4's unhashed form (``ja4_r``): section a, sorted ciphers, sorted extensions_sigalgs.

    Sorting and exclusions as FoxIO's specification says: GREASE removed; SNI
    (0x0000) and ALPN (0x0010) counted in section a but left out of the sorted
    extension list; signature algorithms kept in wire order.
    """
    ciphers = sorted(c for c in hello.cipher_suites if not is_grease(c))
    extensions = sorted(
        k for k, _ in hello.extensions if not is_grease(k) and k not in (EXT_SERVER_NAME, EXT_ALPN)
    )
    third = _hex4(extensions)
    algorithms = [a for a in hello.signature_algorithms if not is_grease(a)]
    if algorithms:
        third += "_" + _hex4(algorithms)
    return f"{_ja4_a(hello, transport)}_{_hex4(ciphers)}_{third}"


def ja4(hello: ClientHello, *, transport: str = "t") -> str:
    """The JA4 fingerprint (``t13d1516h2_8daaf6152771_e5627efa2ab1`` form) of ``hello``."""
    a, ciphers, rest = ja4_raw(hello, transport=transport).split("_", 2)
    if not ciphers:
        return f"{a}_000000000000_{_sha12(rest)}"
    return f"{a}_{_sha12(ciphers)}_{_sha12(rest)}"


@attrs.define
class Connection:
    """One connection the recorder accepted."""

    client_hello: bytes
    peer: tuple[str, int]
    alpn: str | None = None  # protocol the handshake settled on
    request_head: bytes | None = None  # the HTTP/1.1 request line and headers, raw
    # HTTP/2 only: the client's SETTINGS (id, value) in order, its connection
    # WINDOW_UPDATE increment, and the request's header list (pseudo-headers first).
    h2_settings: list[tuple[int, int]] | None = None
    h2_window_update: int | None = None
    h2_headers: list[tuple[str, str]] | None = None

    @property
    def akamai_h2(self) -> str | None:
        """Akamai's HTTP/2 fingerprint ``settings|window_update|priority|pseudo-header order``.

        The priority part is ``0`` (no PRIORITY frames are recorded).
        """
        if self.h2_settings is None or self.h2_headers is None:
            return None
        settings = ";".join(f"{k}:{v}" for k, v in self.h2_settings)
        pseudo = ",".join(name[1] for name, _ in self.h2_headers if name.startswith(":"))
        return f"{settings}|{self.h2_window_update or 0}|0|{pseudo}"

    @property
    def hello(self) -> ClientHello:
        """The parsed ClientHello."""
        return parse_client_hello(self.client_hello)

    @property
    def request_line(self) -> str | None:
        """``GET /path HTTP/1.1`` (``GET /path HTTP/2`` over HTTP/2), when a request was read."""
        if self.h2_headers is not None:
            pseudo = dict(self.h2_headers)
            return f"{pseudo.get(':method')} {pseudo.get(':path')} HTTP/2"
        if self.request_head is None:
            return None
        return self.request_head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Request headers in the order sent, names as sent (HTTP/2: without pseudo-headers)."""
        if self.h2_headers is not None:
            return [(k, v) for k, v in self.h2_headers if not k.startswith(":")]
        if self.request_head is None:
            return []
        lines = self.request_head.decode("latin-1").split("\r\n")[1:]
        pairs = []
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                pairs.append((name, value.strip()))
        return pairs

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class HelloRecorder:
    """A TLS server on 127.0.0.1 that records every ClientHello it receives.

    ``certificate``: a :class:`ssl.SSLContext` configured with the server
    certificate (e.g. ``trustme.CA().issue_cert("localhost").configure_cert(ctx)``).
    With None, each connection is closed right after its ClientHello is read
    (enough for fingerprints; the client sees a failed handshake). With a
    context, the handshake completes, offering only ``alpn`` (default
    ``("http/1.1",)`` so clients speak HTTP/1.1 and their header order can be
    read), one request head is read and answered with ``response``. With
    ``alpn=("h2",)`` the client speaks HTTP/2: its SETTINGS, WINDOW_UPDATE and
    header list are recorded and ``response`` (written as HTTP/1.1 text) is sent
    as HTTP/2 frames: its status, its headers (connection-specific ones dropped)
    and its body.

    Use as a context manager; ``connections`` fills in as clients connect, and
    :meth:`wait_for` waits until ``n`` connections are finished.
    """

    def __init__(
        self,
        certificate: ssl.SSLContext | None = None,
        *,
        alpn: Sequence[str] = ("http/1.1",),
        response: bytes = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: 2\r\nconnection: close\r\n\r\n{}"
        ),
        host: str = "127.0.0.1",
        timeout: float = 10.0,
    ) -> None:
        self._context = certificate
        if certificate is not None and alpn:
            certificate.set_alpn_protocols(list(alpn))
        self._response = response
        self._timeout = timeout
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self._finished = threading.Condition()
        self._done = 0
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> HelloRecorder:
        self._accepting.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and wait for the connection threads."""
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join(timeout=self._timeout)
        for thread in list(self._threads):
            thread.join(timeout=self._timeout)

    def url(self, path: str = "/", host: str = "localhost") -> str:
        """``https://host:port/path`` for this recorder."""
        return f"https://{host}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Connection]:
        """Block until ``count`` connections are finished; returns them (raises on timeout)."""
        with self._finished:
            if not self._finished.wait_for(lambda: self._done >= count, timeout):
                raise TimeoutError(f"{self._done} of {count} connections seen")
        return self.connections[:count]

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.connections))

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock, peer), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            with sock:
                sock.settimeout(self._timeout)
                raw = b""
                while handshake_message(raw) is None:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    raw += chunk
                connection = Connection(client_hello=raw, peer=peer)
                self.connections.append(connection)
                if self._context is not None:
                    self._complete(sock, raw, connection)
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            with self._finished:
                self._done += 1
                self._finished.notify_all()

    def _complete(self, sock: socket.socket, raw: bytes, connection: Connection) -> None:
        """Finish the handshake from the already-read bytes, read one request, answer it."""
        assert self._context is not None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(raw)

        def pump(step: object) -> object:
            while True:
                try:
                    result = step() if callable(step) else None
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("client closed") from None
                    incoming.write(data)
                    continue
                sock.sendall(outgoing.read())
                return result

        pump(tls.do_handshake)
        connection.alpn = tls.selected_alpn_protocol()

        def read() -> bytes:
            chunk = pump(lambda: tls.read(65536))
            assert isinstance(chunk, bytes)
            if not chunk:
                raise ConnectionError("client closed")
            return chunk

        if connection.alpn == "h2":
            _serve_h2(read, lambda data: pump(lambda: tls.write(data)), connection, self._response)
            return
        head = b""
        while b"\r\n\r\n" not in head:
            head += read()
        connection.request_head = head.split(b"\r\n\r\n", 1)[0]
        pump(lambda: tls.write(self._response))
        with contextlib.suppress(ssl.SSLError, OSError, ConnectionError):
            pump(tls.unwrap)


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _serve_h2(
    read: Callable[[], bytes],
    write: Callable[[bytes], object],
    connection: Connection,
    response: bytes,
) -> None:
    """Read the client's first frames up to its first request's headers; answer it."""
    import hpack  # the h2 stack's HPACK codec (a Hypercorn dependency)

    buffer = b""
    while len(buffer) < len(_H2_PREFACE):
        buffer += read()
    if not buffer.startswith(_H2_PREFACE):
        raise ValueError("no HTTP/2 preface")
    buffer = buffer[len(_H2_PREFACE) :]
    settings: list[tuple[int, int]] = []
    block = b""
    stream = 0
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            buffer += read()
        length = int.from_bytes(buffer[:3], "big")
        kind, flags = buffer[3], buffer[4]
        stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
        if kind == 4 and not flags & 0x1:  # SETTINGS (not an ACK)
            settings += [struct.unpack("!HI", payload[i : i + 6]) for i in range(0, length, 6)]
        elif kind == 8 and stream_id == 0:  # WINDOW_UPDATE on the connection
            connection.h2_window_update = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        elif kind in (1, 9):  # HEADERS, CONTINUATION
            if kind == 1:
                stream = stream_id
                pad = payload[0] if flags & 0x8 else 0
                payload = payload[(1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0) :]
                payload = payload[: len(payload) - pad]
            block += payload
            if flags & 0x4:  # END_HEADERS
                break
    connection.h2_settings = settings
    decoded = hpack.Decoder().decode(block)
    connection.h2_headers = [(str(k), str(v)) for k, v in decoded]
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = [(":status", status_line.split()[1])]
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() not in ("connection", "content-length", "transfer-encoding"):
            fields.append((name.strip().lower(), value.strip()))
    fields.append(("content-length", str(len(body))))
    headers = hpack.Encoder().encode(fields)

    def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
        return (
            len(payload).to_bytes(3, "big")
            + bytes([kind, flags])
            + stream_id.to_bytes(4, "big")
            + payload
        )

    write(
        frame(4, 0, 0, b"")  # our SETTINGS
        + frame(4, 1, 0, b"")  # ACK of theirs
        + frame(1, 4, stream, headers)
        + frame(0, 1, stream, body)
        + frame(7, 0, 0, stream.to_bytes(4, "big") + bytes(4))  # GOAWAY, no error
    )
