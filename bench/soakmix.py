"""The session mix of the soak and of the leak test: every way a session can end.

A lean Trio target (echo, or vanish in the middle of a 1 MiB message) and raw
clients, one per ending kind.  Neither keeps anything about a finished
connection, so whatever a long run accumulates is the relay's.  The clients
speak just enough RFC 6455 (relay/wire/frames.py encodes and reads frames).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from bench.wsframes import client_request, server_response
from relay.wire.frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    Frame,
    FrameReader,
    Violation,
    encode_close,
    encode_frame,
    parse_close_payload,
)

__all__ = ["KINDS", "Endpoint", "Target", "run_kind"]

MIB = 1024 * 1024
MAX_FRAME = 2 * MIB
READ = 256 * 1024
MAX_HEAD = 16 * 1024
VANISH_PATH = "/vanish"
NORMAL_CLOSE = struct.pack("!H", 1000)


class Unexpected(Exception):
    """A session ended otherwise than its kind should."""


async def _read_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """An HTTP head and the bytes read past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk or len(data) > MAX_HEAD:
            raise Unexpected("connection closed during the HTTP head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def _next_frame(
    stream: trio.abc.ReceiveStream, reader: FrameReader
) -> Frame | Violation | None:
    while True:
        frame = reader.next_frame()
        if frame is not None:
            return frame
        data = await stream.receive_some(READ)
        if not data:
            return None
        reader.feed(data)


@attrs.define
class Target:
    """A Trio WebSocket target on 127.0.0.1: ``/echo`` echoes, ``/vanish`` drops mid-message."""

    port: int = 0
    live: int = 0  # connections open now

    async def serve(
        self, *, task_status: trio.TaskStatus[Target] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.live += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Unexpected):
            pass
        finally:
            self.live -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        head, rest = await _read_head(stream)
        response = server_response(head)
        if response is None:
            return
        path = head.split(b" ", 2)[1].decode("latin-1")
        await stream.send_all(response)
        reader = FrameReader(from_client=True, max_frame=MAX_FRAME)
        reader.feed(rest)
        while True:
            frame = await _next_frame(stream, reader)
            if frame is None or isinstance(frame, Violation):
                return
            if frame.opcode == CLOSE:
                await stream.send_all(encode_close(parse_close_payload(frame.payload).code))
                return
            if frame.opcode == PING:
                await stream.send_all(encode_frame(PONG, frame.payload))
            elif frame.opcode != PONG:
                if path == VANISH_PATH:
                    # Half of a 1 MiB message, then the connection is simply gone.
                    half = encode_frame(BINARY, bytes(MIB))[: MIB // 2]
                    await stream.send_all(half)
                    return
                await stream.send_all(encode_frame(frame.opcode, frame.payload, fin=frame.fin))


@attrs.frozen
class Endpoint:
    """Where the mix goes: the relay, its key, and the target."""

    host: str
    port: int
    key: str
    target_port: int
    idle_seconds: float = 5.0

    def target_url(self, path: str = "/echo") -> str:
        """A target URL the relay may dial (loopback targets must be allowed)."""
        return f"ws://127.0.0.1:{self.target_port}{path}"


def _check_upgraded(head: bytes) -> None:
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise Unexpected(f"upgrade refused: {head[:40]!r}")


def _masked(opcode: int, payload: bytes) -> bytes:
    return encode_frame(opcode, payload, mask=os.urandom(4))


class Client:
    """One raw client connection to the relay's ``/ws``."""

    def __init__(self, stream: trio.SocketStream, reader: FrameReader) -> None:
        self.stream = stream
        self.reader = reader

    @classmethod
    async def open(cls, endpoint: Endpoint) -> Client:
        """TCP and the WebSocket upgrade."""
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        try:
            request, _accept = client_request(f"{endpoint.host}:{endpoint.port}", "/ws")
            await stream.send_all(request)
            head, rest = await _read_head(stream)
            _check_upgraded(head)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        reader = FrameReader(from_client=False, max_frame=MAX_FRAME)
        reader.feed(rest)
        return cls(stream, reader)

    async def send(self, opcode: int, payload: bytes) -> None:
        """One masked frame."""
        await self.stream.send_all(_masked(opcode, payload))

    async def frame(self) -> Frame:
        """The next frame (pings answered); raises :class:`Unexpected` on EOF."""
        while True:
            frame = await _next_frame(self.stream, self.reader)
            if frame is None or isinstance(frame, Violation):
                raise Unexpected(f"no frame: {frame}")
            if frame.opcode == PING:
                await self.send(PONG, frame.payload)
                continue
            return frame

    async def connect(self, message: str) -> dict[str, object]:
        """Send the connect message; the relay's answer (``connected`` or ``error``)."""
        await self.send(TEXT, message.encode())
        frame = await self.frame()
        if frame.opcode != TEXT:
            raise Unexpected(f"answer opcode {frame.opcode}")
        answer: dict[str, object] = json.loads(frame.payload)
        return answer

    async def echo(self, payload: bytes) -> None:
        """One binary message there and back, compared."""
        await self.send(BINARY, payload)
        received = bytearray()
        while len(received) < len(payload):
            frame = await self.frame()
            if frame.opcode == CLOSE:
                raise Unexpected("closed during an echo")
            received += frame.payload
        if received != payload:
            raise Unexpected("echo differs")

    async def closed_with(self) -> int | None:
        """Read up to the relay's close, answer it; its code."""
        while True:
            frame = await self.frame()
            if frame.opcode == CLOSE:
                code = parse_close_payload(frame.payload).code
                await self.send(CLOSE, frame.payload[:2])
                return code

    async def close(self) -> None:
        """A normal close, relayed to the target and answered back."""
        await self.send(CLOSE, NORMAL_CLOSE)
        while True:
            frame = await self.frame()
            if frame.opcode == CLOSE:
                code = parse_close_payload(frame.payload).code
                if code != 1000:
                    raise Unexpected(f"close answered with {code}")
                return

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _connect_message(endpoint: Endpoint, key: str | None = None, path: str = "/echo") -> str:
    return json.dumps({"apiKey": key or endpoint.key, "url": endpoint.target_url(path)})


async def _session(
    endpoint: Endpoint, body: Callable[[Client], Awaitable[str]], message: str
) -> str:
    client = await Client.open(endpoint)
    try:
        answer = await client.connect(message)
        if answer.get("type") != "connected":
            code = await client.closed_with()
            return f"refused {code}: {answer.get('message')}"
        return await body(client)
    finally:
        await client.aclose()


async def _small(client: Client) -> str:
    await client.echo(os.urandom(32))
    await client.close()
    return "closed"


async def _large(client: Client) -> str:
    await client.echo(os.urandom(MIB))
    await client.close()
    return "closed"


async def _idle(seconds: float, client: Client) -> str:
    await trio.sleep(seconds)
    await client.close()
    return "closed"


async def _client_vanishes(client: Client) -> str:
    # The header of a 1 MiB frame and a part of it, then the connection is gone.
    frame = _masked(BINARY, bytes(MIB))
    await client.stream.send_all(frame[: 64 * 1024])
    return "vanished"


async def _target_vanishes(client: Client) -> str:
    await client.send(BINARY, b"x" * 32)
    # Half of a streamed 1 MiB frame reached the client: no close frame can follow
    # it, so the relay disconnects the client (docs/architecture.md, Closing).
    while True:
        frame = await _next_frame(client.stream, client.reader)
        if frame is None:
            return "target lost, disconnected"
        if isinstance(frame, Frame) and frame.opcode == CLOSE:
            return f"target lost, close {parse_close_payload(frame.payload).code}"


async def run_kind(kind: str, endpoint: Endpoint) -> str:
    """Run one session of ``kind``; how it ended (compare with :data:`KINDS`)."""
    if kind == "small":
        return await _session(endpoint, _small, _connect_message(endpoint))
    if kind == "large":
        return await _session(endpoint, _large, _connect_message(endpoint))
    if kind == "idle":
        body = partial(_idle, endpoint.idle_seconds)
        return await _session(endpoint, body, _connect_message(endpoint))
    if kind == "client_vanishes":
        return await _session(endpoint, _client_vanishes, _connect_message(endpoint))
    if kind == "target_vanishes":
        message = _connect_message(endpoint, path=VANISH_PATH)
        return await _session(endpoint, _target_vanishes, message)
    if kind == "refused_key":
        return await _session(endpoint, _small, _connect_message(endpoint, key="no-such-key"))
    if kind == "bad_connect":
        return await _session(endpoint, _small, "this is not JSON")
    raise ValueError(f"unknown kind {kind!r}")


# Each kind and how it ends when the relay behaves (the start of run_kind's result).
KINDS: dict[str, str] = {
    "small": "closed",
    "large": "closed",
    "idle": "closed",
    "client_vanishes": "vanished",
    "target_vanishes": "target lost, disconnected",
    "refused_key": "refused 1008: Invalid or missing API key",
    "bad_connect": "refused 1008: connect message is not valid JSON",
}
