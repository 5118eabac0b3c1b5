"""The echo target: a lean WebSocket server that sends every frame back.

``python -m bench.echo [--port N]`` prints ``READY <port>`` once listening.

It echoes frame by frame (FIN bit and opcode kept), so fragmented messages come
back fragmented and a 1 MiB message is streamed back as it arrives instead of
being buffered whole: per read it unmasks what arrived with one C-speed XOR and
answers with one write.

Two options make it the target of the bench's other variants: ``--cert``/``--key``
serve ``wss://`` (``--tls-log`` records each negotiated protocol and cipher suite
once), and a connection whose request path starts with ``/whole`` gets each data
frame back in one write once it has arrived in full, as an echo built on a
WebSocket library (Node ``ws``) does: a 1 MiB message then leaves in one 1 MiB
send instead of one send per read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import ClassVar, cast

from bench.osutil import raise_nofile, run_loop
from bench.tls import describe, server_context
from bench.wsframes import CLOSE, PING, apply_mask, frame_header, parse_header, server_response

_MAX_HEAD = 65536


class EchoProtocol(asyncio.Protocol):
    """One echoed connection: HTTP upgrade, then frames streamed back."""

    # False: one write per echoed frame, the segment pattern of an ordinary server;
    # True: everything echoed from one read goes out in one write.
    coalesce = False
    # Where to record negotiated TLS parameters, and those already recorded.
    tls_log: ClassVar[str | None] = None
    tls_seen: ClassVar[set[str]] = set()

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.pending = bytearray()  # an incomplete header (or control frame)
        self.remaining = 0  # payload bytes of the current data frame still to come
        self.mask: bytes | None = None
        self.phase = 0
        self.whole = False  # /whole: each data frame echoed in one write once complete
        self.body: list[bytes] = []  # that frame's header and payload so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; note a TLS connection's protocol and suite."""
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        negotiated = describe(transport.get_extra_info("ssl_object"))
        if negotiated and self.tls_log and negotiated not in self.tls_seen:
            self.tls_seen.add(negotiated)
            with open(self.tls_log, "a") as fh:
                fh.write(negotiated + "\n")

    def _unmask(self, chunk: memoryview) -> bytes:
        mask = self.mask
        if mask is None:
            return bytes(chunk)
        phase = self.phase
        self.phase = (phase + len(chunk)) & 3
        # A payload split across reads continues the key where the last read stopped.
        return apply_mask(chunk, mask[phase:] + mask[:phase] if phase else mask)

    def _upgrade(self, data: bytes) -> bytes | None:
        self.pending += data
        end = self.pending.find(b"\r\n\r\n")
        if end < 0:
            if len(self.pending) > _MAX_HEAD:
                self._reject()
            return None
        head = bytes(self.pending[:end])
        target = head.split(b"\r\n", 1)[0].split(b" ")
        self.whole = len(target) > 1 and target[1].startswith(b"/whole")
        response = server_response(head)
        if response is None:
            self._reject()
            return None
        assert self.transport is not None
        self.transport.write(response)
        rest = bytes(self.pending[end + 4 :])
        self.pending.clear()
        self.upgraded = True
        return rest

    def _reject(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Echo whatever complete or partial frames ``data`` holds."""
        if not self.upgraded:
            rest = self._upgrade(data)
            if not rest:
                return
            data = rest
        out: list[bytes] = []
        view = memoryview(data)
        n = len(data)
        pos = 0
        if self.remaining:
            take = min(self.remaining, n)
            piece = self._unmask(view[:take])
            self.remaining -= take
            pos = take
            if not self.whole:
                out.append(piece)
            else:
                self.body.append(piece)
                if not self.remaining:
                    self._write_whole(out)
        elif self.pending:
            data = bytes(self.pending) + data
            self.pending.clear()
            view = memoryview(data)
            n = len(data)
        while pos < n:
            # Fast path: a whole small masked data frame (the 32-byte pipelined case),
            # echoed without a function call for its header.
            second = data[pos + 1] if pos + 1 < n else 0
            if 0x80 <= second < 0xFE and not data[pos] & 0x08:
                length = second & 0x7F
                start = pos + 6
                if start + length <= n:
                    echo = bytes((data[pos], length)) + apply_mask(
                        view[start : start + length], data[pos + 2 : start]
                    )
                    pos = start + length
                    if self.coalesce:
                        out.append(echo)
                    else:
                        self._flush(out)
                        out = []
                        assert self.transport is not None
                        self.transport.write(echo)
                    continue
            header = parse_header(data, pos)
            if header is None:
                self.pending += view[pos:]
                break
            first, head, mask, length = header
            start = pos + head
            if first & 0x08:  # control frame: small, handled whole
                if start + length > n:
                    self.pending += view[pos:]
                    break
                body = view[start : start + length]
                payload = apply_mask(body, mask) if mask else bytes(body)
                opcode = first & 0x0F
                if opcode == CLOSE:
                    out.append(frame_header(0x88, length) + payload)
                    self._flush(out)
                    assert self.transport is not None
                    self.transport.close()
                    return
                if opcode == PING:
                    out.append(frame_header(0x8A, length) + payload)
                pos = start + length
                continue
            self.mask = mask
            self.phase = 0
            take = min(length, n - start)
            if self.whole:
                self.body = [frame_header(first, length)]
                if take:
                    self.body.append(self._unmask(view[start : start + take]))
                self.remaining = length - take
                pos = start + take
                if not self.remaining:
                    self._write_whole(out)
                continue
            out.append(frame_header(first, length))
            if take:
                out.append(self._unmask(view[start : start + take]))
            self.remaining = length - take
            pos = start + take
            if not self.coalesce:
                self._flush(out)
                out = []
        self._flush(out)

    def _write_whole(self, out: list[bytes]) -> None:
        """Send what is queued, then the completed frame in one write."""
        self._flush(out)
        out.clear()
        assert self.transport is not None
        self.transport.write(b"".join(self.body))
        self.body = []

    def _flush(self, out: list[bytes]) -> None:
        if not out or self.transport is None:
            return
        if len(out) > 2:
            # Many small frames: one joined write beats a scatter list of tiny buffers.
            self.transport.write(b"".join(out))
        else:
            # A large frame's chunk: hand it over without another copy.
            self.transport.writelines(out)


async def serve(
    host: str,
    port: int,
    coalesce: bool = False,
    tls: tuple[str, str] | None = None,
    tls_log: str | None = None,
) -> None:
    """Listen on ``host:port`` (0 picks a port), announce it, and serve forever;
    ``tls`` is a (certificate, key) pair: serve ``wss://``."""
    EchoProtocol.coalesce = coalesce
    EchoProtocol.tls_log = tls_log
    loop = asyncio.get_running_loop()
    context = server_context(*tls) if tls else None
    server = await loop.create_server(EchoProtocol, host, port, backlog=4096, ssl=context)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry of the echo target."""
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--coalesce", action="store_true", help="one write per read")
    parser.add_argument("--cert", help="PEM certificate chain: serve wss://")
    parser.add_argument("--key", help="its private key")
    parser.add_argument("--tls-log", help="append each negotiated protocol and suite here")
    args = parser.parse_args(argv)
    raise_nofile()
    tls = (args.cert, args.key) if args.cert else None
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(args.host, args.port, args.coalesce, tls, args.tls_log))


if __name__ == "__main__":
    main()
