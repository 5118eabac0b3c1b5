"""A dial that looks like Chrome offers permessage-deflate, as Chrome does; a target that
accepts compresses its messages, and the client — which negotiated no extension with the
gateway — must get them inflated, never compressed bytes (relay/browser/deflate.py)."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import pytest
import trio

from relay.browser.deflate import CHUNK, Agreement, Inflater, parse_agreement
from relay.client import open_relay
from relay.config import AgentConfig
from relay.wire.frames import BINARY, CONTINUATION, PING, TEXT, encode_frame, parse_header
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.proxies import free_port

RSV1 = 0x40


def _compressor(bits: int = 15) -> zlib._Compress:
    return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits)


def _deflate(compressor: zlib._Compress, payload: bytes) -> bytes:
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def _frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    raw = bytearray(encode_frame(opcode, payload, fin=fin))
    if rsv1:
        raw[0] |= RSV1
    return bytes(raw)


def _frames(data: bytes) -> list[tuple[int, bool, bool, bytes]]:
    """(opcode, fin, rsv1, payload) of every whole frame in ``data``."""
    found = []
    pos = 0
    while pos < len(data):
        header = parse_header(data, pos, len(data))
        assert header is not None
        b0, b1, length = header
        size = 2 + (2 if b1 & 0x7F == 126 else 8 if b1 & 0x7F == 127 else 0)
        payload = data[pos + size : pos + size + length]
        assert len(payload) == length
        found.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & RSV1), payload))
        pos += size + length
    return found


def _messages(frames: list[tuple[int, bool, bool, bytes]]) -> list[tuple[int, bytes]]:
    messages: list[tuple[int, bytes]] = []
    current: tuple[int, bytearray] | None = None
    for opcode, fin, _rsv1, payload in frames:
        if opcode >= 8:
            messages.append((opcode, payload))
            continue
        if opcode != CONTINUATION:
            assert current is None
            current = (opcode, bytearray())
        assert current is not None
        current[1].extend(payload)
        if fin:
            messages.append((current[0], bytes(current[1])))
            current = None
    return messages


def _feed(inflater: Inflater, data: bytes, step: int) -> bytes:
    return b"".join(inflater.feed(data[i : i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_compressed_messages_come_out_inflated_and_everything_else_as_it_was(
    step: int,
) -> None:
    compressor = _compressor()
    text = "prices " * 500
    first = _deflate(compressor, text.encode())
    second = _deflate(compressor, text.encode())  # context takeover: back-references
    assert len(second) < len(first)
    big = bytes(range(256)) * 8192  # 2 MiB: several CHUNK fragments out
    big_compressed = _deflate(compressor, big)
    fragmented = _deflate(compressor, b"fragmented message body" * 100)
    stream = b"".join(
        [
            _frame(TEXT, first, rsv1=True),
            _frame(BINARY, b"plain bytes"),  # uncompressed messages stay allowed
            _frame(TEXT, second, rsv1=True),
            _frame(BINARY, fragmented[:10], fin=False, rsv1=True),
            _frame(PING, b"between fragments"),
            _frame(CONTINUATION, fragmented[10:]),
            _frame(BINARY, big_compressed, rsv1=True),
        ]
    )
    out = _feed(Inflater(Agreement()), stream, step)
    frames = _frames(out)
    assert not any(rsv1 for _, _, rsv1, _ in frames)  # nothing compressed reaches the client
    assert max(len(payload) for *_, payload in frames) <= CHUNK
    assert _messages(frames) == [
        (TEXT, text.encode()),
        (BINARY, b"plain bytes"),
        (TEXT, text.encode()),
        (PING, b"between fragments"),
        (BINARY, b"fragmented message body" * 100),
        (BINARY, big),
    ]


def test_no_context_takeover_and_a_small_window() -> None:
    agreement = parse_agreement(
        b"permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    )
    assert agreement == Agreement(server_no_context_takeover=True, server_max_window_bits=10)
    payloads = [b"abc" * 300, b"abc" * 300]
    stream = b""
    for payload in payloads:
        stream += _frame(TEXT, _deflate(_compressor(10), payload), rsv1=True)  # fresh context
    out = _feed(Inflater(agreement), stream, 5)
    assert _messages(_frames(out)) == [(TEXT, payload) for payload in payloads]


def test_data_that_does_not_inflate_is_an_error() -> None:
    from relay.browser.deflate import InflateError

    with pytest.raises(InflateError):
        Inflater(Agreement()).feed(_frame(TEXT, b"\xff\xff\xff\xff not deflate", rsv1=True))


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        (b"permessage-deflate", True),
        (b"permessage-deflate; client_max_window_bits=12; server_max_window_bits=12", True),
        (b"permessage-deflate; client_no_context_takeover", True),
        (b"permessage-deflate; client_max_window_bits", False),  # a value is required back
        (b"permessage-deflate; server_max_window_bits=7", False),
        (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", False),
        (b"permessage-deflate; x-unknown", False),
        (b"permessage-deflate, permessage-deflate", False),
        (b"x-webkit-deflate-frame", False),
    ],
)
def test_the_targets_answer_is_checked(answer: bytes, valid: bool) -> None:
    assert (parse_agreement(answer) is not None) is valid


@asynccontextmanager
async def _compressing_echo(cert: str, key: str) -> AsyncIterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "tests.support.echo_server", str(port), cert, key]
    command.append("--deflate")
    async with trio.open_nursery() as nursery:
        run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        with trio.fail_after(30):  # a hang guard only
            assert b"ready" in await process.stdout.receive_some()
        try:
            yield f"wss://127.0.0.1:{port}/"
        finally:
            process.kill()


async def test_a_compressing_target_reaches_the_client_inflated(
    nursery: trio.Nursery, ca_file: str, leaf_files: tuple[str, str]
) -> None:
    agents = (AgentConfig(slug="chrome", impersonate="chrome"),)
    config = make_config(agents=agents)
    config = attrs.evolve(config, targets=attrs.evolve(config.targets, ca_file=ca_file))
    running = await start_gateway(nursery, config)
    async with (
        _compressing_echo(*leaf_files) as target_url,
        open_relay(running.ws_url, api_key=KEY, url=target_url) as relayed,
    ):
        for message in ("tick " * 2000, b"\x00" * 3_000_000, "", "a", bytes(range(256)) * 40):
            await relayed.websocket.send_message(message)
            assert await relayed.websocket.get_message() == message
        await relayed.websocket.aclose(4001, "done")


@asynccontextmanager
async def _plain_compressing_echo() -> AsyncIterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "tests.support.echo_server", str(port), "--deflate"]
    async with trio.open_nursery() as nursery:
        run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        with trio.fail_after(30):  # a hang guard only
            assert b"ready" in await process.stdout.receive_some()
        try:
            yield f"ws://127.0.0.1:{port}/"
        finally:
            process.kill()


async def test_a_plain_ws_target_gets_chromes_request_and_is_inflated_too(
    nursery: trio.Nursery,
) -> None:
    agents = (AgentConfig(slug="chrome", impersonate="chrome"),)
    running = await start_gateway(nursery, make_config(agents=agents))
    async with (
        _plain_compressing_echo() as target_url,
        open_relay(running.ws_url, api_key=KEY, url=target_url) as relayed,
    ):
        for message in ("quote " * 5000, b"\x07" * 1_500_000):
            await relayed.websocket.send_message(message)
            assert await relayed.websocket.get_message() == message
