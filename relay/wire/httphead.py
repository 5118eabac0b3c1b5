"""A strict parser for the common HTTP/1.1 heads of a WebSocket opening handshake.

h11 parses every head correctly, and costs a ``Connection`` object, its state
machine and several passes over the bytes per connection: about a tenth of a
session's set-up CPU (docs/performance.md, "Session set-up, redesigned").
Almost every head the relay sees is the same simple shape: a ``GET`` with a
handful of ``Name: value`` lines, arriving whole in one read.  These functions
accept exactly that shape and nothing else; anything unusual (another method
or version, a bare LF, an obsolete line fold, a control or non-ASCII byte, a
tab inside a value, ``Content-Length`` or ``Transfer-Encoding``, no ``Host`` or
two) makes them return None and the caller hands the same bytes to h11, so the
answer to an unusual head is h11's, as before.

For every head they do accept, the result is what h11 produces from the same
bytes (lower-case names, values without surrounding whitespace, the bytes
after the head as trailing data); ``tests/test_request_parser.py`` checks that
against h11 itself.  Nothing here does I/O.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["ParsedRequest", "ParsedResponse", "parse_request", "parse_response"]

_END = b"\r\n\r\n"
# A subset of h11's grammar (h11/_abnf.py): a token name, OWS, a value of
# visible ASCII with single-space or multi-space runs inside, OWS.
_HEADER = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[\x21-\x7e]+(?: +[\x21-\x7e]+)*)?)[ \t]*"
)
_REQUEST_LINE = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1")
# The status line h11 accepts, narrowed to HTTP/1.1 and a visible-ASCII reason.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: ((?:[\x20-\x7e])*))?")
# Headers whose presence gives h11 framing work (and errors) of its own.
_FRAMING = (b"content-length", b"transfer-encoding")


@attrs.frozen(slots=True)
class ParsedRequest:
    """A request head as h11 would report it, and the bytes after it."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    head_size: int  # bytes up to and including the blank line
    trailing: bytes


@attrs.frozen(slots=True)
class ParsedResponse:
    """A response head as h11 would report it, and the bytes after it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    trailing: bytes


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes]] | None:
    headers: list[tuple[bytes, bytes]] = []
    fullmatch = _HEADER.fullmatch
    for line in lines:
        match = fullmatch(line)
        if match is None:
            return None
        name = match[1].lower()
        if name in _FRAMING:
            return None
        headers.append((name, match[2]))
    return headers


def parse_request(data: bytes) -> ParsedRequest | None:
    """The request head at the start of ``data`` if it is whole and of the common
    shape; None otherwise (the caller then asks h11)."""
    end = data.find(_END)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    headers = _headers(lines[1:])
    if headers is None:
        return None
    # h11 refuses an HTTP/1.1 request without exactly one Host header.
    if sum(1 for name, _ in headers if name == b"host") != 1:
        return None
    size = end + 4
    return ParsedRequest(b"GET", line[1], b"1.1", headers, size, data[size:])


def parse_response(data: bytes) -> ParsedResponse | None:
    """The response head at the start of ``data`` if it is whole and of the common
    shape; None otherwise (the caller then asks h11)."""
    end = data.find(_END)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    line = _STATUS_LINE.fullmatch(lines[0])
    if line is None:
        return None
    headers = _headers(lines[1:])
    if headers is None:
        return None
    return ParsedResponse(int(line[1]), line[2] or b"", headers, data[end + 4 :])
