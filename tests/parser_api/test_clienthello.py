"""The ClientHello parser and fingerprints of ``tests.support.clienthello``, checked
against FoxIO's published JA4 example and against what Python's ``ssl`` was told to send."""

from __future__ import annotations

import socket
import ssl
import struct

import trustme

from tests.support.clienthello import (
    HelloRecorder,
    is_grease,
    ja3,
    ja3n,
    ja4,
    ja4_raw,
    parse_client_hello,
)

# FoxIO's JA4 README example (a Chrome ClientHello): ja4 and its raw form ja4_r.
PUBLISHED_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
PUBLISHED_JA4_R = (
    "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
    "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
    "0403,0804,0401,0503,0805,0501,0806,0601"
)
GREASE = 0x7A7A


def _vector(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def _u16s(values: list[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def build_hello(ciphers: list[int], extensions: list[tuple[int, bytes]]) -> bytes:
    """A ClientHello in one TLS record, built by hand (independent of the parser)."""
    body = (
        struct.pack("!H", 0x0303)
        + bytes(32)
        + _vector(bytes(32), 1)
        + _vector(_u16s(ciphers), 2)
        + _vector(b"\x00", 1)
        + _vector(b"".join(struct.pack("!H", k) + _vector(v, 2) for k, v in extensions), 2)
    )
    message = b"\x01" + _vector(body, 3)
    return b"\x16\x03\x01" + _vector(message, 2)


def published_example() -> bytes:
    """The README's ClientHello, in Chrome's wire order, with GREASE values added."""
    ciphers = [GREASE, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9]
    ciphers += [0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    sigalgs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    sni = _vector(b"\x00" + _vector(b"example.com", 2), 2)
    alpn = _vector(_vector(b"h2", 1) + _vector(b"http/1.1", 1), 2)
    extensions = [
        (GREASE, b""),
        (0x0000, sni),
        (0x0017, b""),
        (0xFF01, b"\x00"),
        (0x000A, _vector(_u16s([GREASE, 0x001D, 0x0017, 0x0018]), 2)),
        (0x000B, _vector(b"\x00", 1)),
        (0x0023, b""),
        (0x0010, alpn),
        (0x0005, b"\x01\x00\x00\x00\x00"),
        (0x000D, _vector(_u16s(sigalgs), 2)),
        (0x0012, b""),
        (0x0033, _vector(b"", 2)),
        (0x002D, _vector(b"\x01", 1)),
        (0x002B, _vector(_u16s([GREASE, 0x0304, 0x0303]), 1)),
        (0x001B, _vector(b"\x00\x02", 1)),
        (0x4469, b""),
        (0x0015, bytes(10)),
    ]
    return build_hello(ciphers, extensions)


def test_grease_values_are_recognised() -> None:
    greases = [0x0A0A + 0x1010 * i for i in range(16)]
    assert all(is_grease(v) for v in greases)
    assert not any(is_grease(v) for v in (0x0A0B, 0x1301, 0x0000, 0xFF01, 0x1A0A))


def test_ja4_of_the_published_example() -> None:
    hello = parse_client_hello(published_example())
    assert hello.server_name == "example.com"
    assert hello.alpn == (b"h2", b"http/1.1")
    assert hello.supported_versions == (GREASE, 0x0304, 0x0303)
    assert ja4_raw(hello) == PUBLISHED_JA4_R
    assert ja4(hello) == PUBLISHED_JA4


def test_ja3_keeps_wire_order_and_drops_grease() -> None:
    hello = parse_client_hello(published_example())
    text, digest = ja3(hello)
    version, ciphers, extensions, groups, formats = text.split(",")
    assert version == "771"
    assert ciphers.split("-")[:3] == ["4865", "4866", "4867"]
    assert extensions.split("-")[:4] == ["0", "23", "65281", "10"]
    assert groups == "29-23-24"
    assert formats == "0"
    assert len(digest) == 32
    sorted_text, _ = ja3n(hello)
    assert sorted_text.split(",")[2] == "-".join(
        str(v) for v in sorted(int(x) for x in extensions.split("-"))
    )


def test_no_sni_no_alpn_and_no_signature_algorithms() -> None:
    hello = parse_client_hello(build_hello([0x1301, 0x002F], [(0x0017, b"")]))
    assert ja4_raw(hello) == "t12i020100_002f,1301_0017"
    assert ja4(hello).startswith("t12i020100_")


def test_python_ssl_hello_is_parsed_as_configured() -> None:
    """What the recorder captures from Python's ``ssl`` is what its context was told to send."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with HelloRecorder() as recorder:
        with socket.create_connection(("127.0.0.1", recorder.port)) as sock:
            try:
                with context.wrap_socket(sock, server_hostname="shop.example") as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass  # the recorder drops the connection after the ClientHello
        (connection,) = recorder.wait_for(1)
    hello = connection.hello
    assert hello.server_name == "shop.example"
    assert hello.alpn == (b"h2", b"http/1.1")
    expected = tuple(cipher["id"] & 0xFFFF for cipher in context.get_ciphers())
    assert tuple(c for c in hello.cipher_suites if c != 0x00FF) == expected
    assert ja4(hello).startswith(f"t13d{len(hello.cipher_suites):02d}")
    assert ja4(hello).split("_")[0].endswith("h2")


def test_recorder_completes_http1_and_reads_the_header_order() -> None:
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    client.set_alpn_protocols(["h2", "http/1.1"])
    with HelloRecorder(server) as recorder:
        with (
            socket.create_connection(("127.0.0.1", recorder.port)) as sock,
            client.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            tls.sendall(
                b"GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nZ-Last: 1\r\nA-First: 2\r\n\r\n"
            )
            answer = tls.recv(4096)
        (connection,) = recorder.wait_for(1)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert connection.alpn == "http/1.1"
    assert connection.request_line == "GET /x?y=1 HTTP/1.1"
    assert [name for name, _ in connection.headers] == ["Host", "Z-Last", "A-First"]
    assert connection.header("a-first") == "2"
