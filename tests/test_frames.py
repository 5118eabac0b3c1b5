"""The sans-I/O frame codec: exact bytes, random splits, random garbage."""

from __future__ import annotations

import itertools
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.wire.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    CloseFrame,
    Frame,
    FrameReader,
    FrameRelay,
    Violation,
    encode_close,
    encode_frame,
    parse_close_payload,
)
from relay.wire.mask import xor_region


def _frames(data: bytes, *, from_client: bool) -> list[Frame]:
    reader = FrameReader(from_client=from_client, max_frame=1 << 30)
    reader.feed(data)
    out: list[Frame] = []
    while (item := reader.next_frame()) is not None:
        assert isinstance(item, Frame)
        out.append(item)
    return out


def _relay(
    data: bytes, cuts: list[int], *, from_client: bool, limit: int = 1 << 30
) -> tuple[bytes, object]:
    relay = FrameRelay(from_client=from_client, max_message_size=limit)
    out = []
    stop: object = None
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(bounds):
        chunk = relay.feed(data[start:end])
        out.append(bytes(chunk.out))
        if chunk.stop is not None:
            stop = chunk.stop
            break
    return b"".join(out), stop


def test_encode_frame_lengths() -> None:
    assert encode_frame(TEXT, b"hi") == b"\x81\x02hi"
    assert encode_frame(BINARY, b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode_frame(BINARY, b"x" * 65536)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")
    assert encode_frame(TEXT, b"a", fin=False)[0] == 0x01


def test_masked_encoding_round_trips() -> None:
    payload = os.urandom(1000)
    wire = encode_frame(BINARY, payload, mask=b"\x01\x02\x03\x04")
    assert wire[1] & 0x80
    assert _frames(wire, from_client=True) == [Frame(BINARY, True, payload)]


def test_close_encoding_and_parsing() -> None:
    assert encode_close(None) == b"\x88\x00"
    assert parse_close_payload(b"\x03\xe8bye") == CloseFrame(1000, "bye", b"\x03\xe8bye")
    assert parse_close_payload(b"").code is None
    long_reason = "é" * 100  # 200 bytes: cut on a character boundary to fit 125
    frame = _frames(encode_close(1000, long_reason), from_client=False)[0]
    assert len(frame.payload) <= 125
    assert parse_close_payload(frame.payload).reason == "é" * 61


def test_xor_region_with_phase() -> None:
    data = bytearray(os.urandom(103))
    whole = bytearray(data)
    xor_region(whole, 0, 103, b"abcd", 0)
    split = bytearray(data)
    xor_region(split, 0, 7, b"abcd", 0)
    xor_region(split, 7, 103, b"abcd", 3)
    assert whole == split


messages = st.lists(
    st.tuples(st.sampled_from([TEXT, BINARY, PING]), st.binary(max_size=300)),
    min_size=1,
    max_size=12,
)


def _client_stream(items: list[tuple[int, bytes]]) -> bytes:
    wire = b""
    for opcode, payload in items:
        body = payload[:125] if opcode == PING else payload
        wire += encode_frame(opcode, body, mask=os.urandom(4))
    return wire + encode_close(4000, "end", mask=os.urandom(4))


@settings(max_examples=200, deadline=None)
@given(items=messages, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_random_splits_relay_client_frames_identically(
    items: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    wire = _client_stream(items)
    out, stop = _relay(wire, cuts, from_client=True)
    assert stop == CloseFrame(4000, "end", b"\x0f\xa0end")
    # Same frames, same payloads, new mask keys.
    assert _frames(out, from_client=True) == _frames(wire, from_client=True)
    assert len(out) == len(wire)


@settings(max_examples=200, deadline=None)
@given(items=messages, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_random_splits_pass_server_frames_untouched(
    items: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(
        encode_frame(op, p[:125] if op == PING else p) for op, p in items
    ) + encode_close(1000)
    out, stop = _relay(wire, cuts, from_client=False)
    assert out == wire
    assert isinstance(stop, CloseFrame)
    assert stop.code == 1000


def test_large_frames_stream_and_small_ones_are_held() -> None:
    big = encode_frame(BINARY, b"b" * 200_000)
    relay = FrameRelay(from_client=False, max_message_size=1 << 20)
    first = relay.feed(big[:1000])
    assert bytes(first.out) == big[:1000]  # streamed: over the hold limit
    assert relay.mid_frame
    rest = relay.feed(big[1000:])
    assert bytes(rest.out) == big[1000:]
    assert not relay.mid_frame
    small = encode_frame(TEXT, b"s" * 1000)
    held = relay.feed(small[:500])
    assert bytes(held.out) == b""  # held until whole
    assert not relay.mid_frame
    assert bytes(relay.feed(small[500:]).out) == small


def test_fragmented_message_size_is_enforced_across_frames() -> None:
    wire = (
        encode_frame(TEXT, b"a" * 60, fin=False)
        + encode_frame(CONTINUATION, b"b" * 60, fin=False)
        + encode_frame(CONTINUATION, b"c" * 60)
    )
    out, stop = _relay(wire, [], from_client=False, limit=150)
    assert stop == Violation(1009, "message over 150 bytes")
    assert out == wire[: 2 * 62]  # the first two fragments went out, not the third


def test_role_violations() -> None:
    _, stop = _relay(encode_frame(TEXT, b"x"), [], from_client=True)
    assert stop == Violation(1002, "frame from client not masked")
    _, stop = _relay(encode_frame(TEXT, b"x", mask=b"abcd"), [], from_client=False)
    assert stop == Violation(1002, "frame from server masked")
    _, stop = _relay(encode_frame(PING, b"p" * 126), [], from_client=False)
    assert isinstance(stop, Violation)
    assert stop.code == 1002
    _, stop = _relay(encode_frame(CLOSE, b"", fin=False), [], from_client=False)
    assert isinstance(stop, Violation)


def test_reserved_opcodes_and_bits_pass_through_to_the_endpoint() -> None:
    odd = bytes([0x80 | 0x40 | 0x3, 2]) + b"zz"  # RSV1 and reserved opcode 3
    out, stop = _relay(odd, [], from_client=False)
    assert (out, stop) == (odd, None)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_random_bytes_only_produce_documented_outcomes(data: bytes, cuts: list[int]) -> None:
    for from_client in (True, False):
        out, stop = _relay(data, cuts, from_client=from_client, limit=1000)
        assert stop is None or isinstance(stop, CloseFrame | Violation)
        assert len(out) <= len(data)
        if isinstance(stop, Violation):
            assert stop.code in (1002, 1009)
