"""A target that accepts and then never reads, while the client keeps sending:
the relay (its own process, so its RSS is its own) must stay small and slow the
client down through TCP, and still serve everyone else."""

from __future__ import annotations

import contextlib
import json
import os

import trio

from relay.client import open_relay
from relay.wire.frames import BINARY, encode_frame
from tests.faults.misbehaving import Misbehaving, accept_websocket
from tests.support import wsp
from tests.support.conditions import eventually
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.process import relay_process
from tests.support.target import TargetServer

MIB = 1024 * 1024
CHUNK = 64 * 1024
# Kernel socket buffers on the two loopback hops hold at most ~20 MiB here
# (tcp_wmem/tcp_rmem maxima); anything far beyond that would be the relay buffering.
MAX_IN_FLIGHT = 64 * MIB
MAX_RSS_GROWTH_KIB = 16 * 1024


async def _never_reads(server: Misbehaving, stream: trio.SocketStream) -> None:
    await accept_websocket(stream)
    await trio.sleep_forever()


async def _until_stalled(progress: list[int]) -> int:
    """Poll the client's progress until it stops moving (or passes the bound)."""
    last, still = -1, 0
    while still < 10 and progress[0] <= MAX_IN_FLIGHT:
        await trio.sleep(0.1)
        still = still + 1 if progress[0] == last else 0
        last = progress[0]
    return progress[0]


async def test_target_that_never_reads_slows_the_client_and_bounds_relay_memory(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    sink: Misbehaving = await nursery.start(Misbehaving(_never_reads).serve)
    args = ["--bind", "127.0.0.1:0", "--allow-private-targets", "--api-key", "k"]
    async with relay_process(args) as relay:
        client = await wsp.connect(relay.ws_url)
        await client.send(wsp.TextMessage(json.dumps({"apiKey": "k", "url": sink.url})))
        assert json.loads(str(await client.next_message()))["type"] == "connected"
        baseline = relay.rss_kib()
        # One masked frame, sent again and again (a fixed mask is still a mask).
        frame = encode_frame(BINARY, os.urandom(CHUNK), mask=b"\x11\x22\x33\x44")
        progress = [0]

        async def keep_sending() -> None:
            while True:
                await client.stream.send_all(frame)
                progress[0] += CHUNK

        async with trio.open_nursery() as sending:
            sending.start_soon(keep_sending)
            sent = await _until_stalled(progress)
            growth = relay.rss_kib() - baseline
            # The client is held back: what it got out is what the buffers on the
            # way hold, and the relay did not grow to absorb it.
            assert sent <= MAX_IN_FLIGHT, f"the client pushed {sent} bytes into a stuck target"
            assert growth <= MAX_RSS_GROWTH_KIB, f"relay RSS grew by {growth} KiB"
            # Everyone else is served meanwhile.
            async with open_relay(relay.ws_url, api_key="k", url=f"{target.url}/echo") as other:
                await other.websocket.send_message("not held up")
                assert await other.websocket.get_message() == "not held up"
            assert progress[0] <= MAX_IN_FLIGHT  # still stuck
            sending.cancel_scope.cancel()
        assert relay.rss_kib() - baseline <= MAX_RSS_GROWTH_KIB


async def test_send_stall_timeout_frees_the_slot_of_a_target_that_never_reads(
    nursery: trio.Nursery,
) -> None:
    """With [server] send_stall_timeout, a target that takes no byte for that long
    while a write to it waits ends the session: the client gets 1011, the outcome
    is send_stalled, and the session is gone (off by default: the test above)."""
    sink: Misbehaving = await nursery.start(Misbehaving(_never_reads).serve)
    config = make_config(send_stall_timeout=0.5)
    running = await start_gateway(nursery, config)
    client = await wsp.connect(running.ws_url)
    await client.send(wsp.TextMessage(json.dumps({"apiKey": KEY, "url": sink.url})))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    frame = encode_frame(BINARY, os.urandom(CHUNK), mask=b"\x11\x22\x33\x44")

    async def keep_sending() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await client.stream.send_all(frame)

    async with trio.open_nursery() as sending:
        sending.start_soon(keep_sending)
        with trio.fail_after(30):  # a hang guard; the stall itself is 0.5 s
            closed = await client.next_message()
        sending.cancel_scope.cancel()
    assert isinstance(closed, wsp.CloseConnection)
    assert (closed.code, closed.reason) == (1011, "target stopped reading")
    registry = running.gateway.registry
    await eventually(lambda: not registry.sessions, "the session to end")
    assert registry.stats.outcomes == {"send_stalled": 1}
