"""Backpressure: a flooding target and a client that stops reading must slow the
target, not grow the relay.  The relay runs as its own process so its RSS is
measured alone."""

from __future__ import annotations

import json

import trio

from tests.support import wsp
from tests.support.process import relay_process
from tests.support.target import TargetServer

MIB = 1024 * 1024
FLOOD = 256 * MIB
CHUNK = 64 * 1024
# Kernel socket buffers on the two loopback hops hold at most ~20 MiB here
# (tcp_wmem/tcp_rmem maxima); anything far beyond that would be the relay buffering.
MAX_IN_FLIGHT = 64 * MIB
MAX_RSS_GROWTH_KIB = 16 * 1024


async def _wait_for_stall(target: TargetServer) -> int:
    """Poll the target's progress until it stops moving (or passes the bound)."""
    record = target.connections[0]
    last, still = -1, 0
    while still < 10 and record.sent_bytes <= MAX_IN_FLIGHT:
        await trio.sleep(0.1)
        still = still + 1 if record.sent_bytes == last else 0
        last = record.sent_bytes
    return record.sent_bytes


async def test_slow_reader_against_flooding_target_keeps_relay_memory_bounded(
    target: TargetServer,
) -> None:
    async with relay_process(
        ["--bind", "127.0.0.1:0", "--allow-private-targets", "--api-key", "k"]
    ) as relay:
        client = await wsp.connect(relay.ws_url)
        url = f"{target.url}/flood?total={FLOOD}&size={CHUNK}"
        await client.send(wsp.TextMessage(json.dumps({"apiKey": "k", "url": url})))
        assert json.loads(str(await client.next_message()))["type"] == "connected"
        baseline = relay.rss_kib()
        # The client now reads nothing.
        sent = await _wait_for_stall(target)
        growth = relay.rss_kib() - baseline
        assert sent <= MAX_IN_FLIGHT, f"target pushed {sent} bytes into a non-reading client"
        assert sent < FLOOD
        assert growth <= MAX_RSS_GROWTH_KIB, f"relay RSS grew by {growth} KiB"
        # Nothing was lost: once the client reads, every byte arrives in order.
        received = 0
        pattern = bytes(range(256)) * (CHUNK // 256)
        with trio.fail_after(120):
            while received < FLOOD:
                message = await client.next_message()
                assert isinstance(message, bytes)
                assert message == pattern
                received += len(message)
        assert received == FLOOD
        assert relay.rss_kib() - baseline <= MAX_RSS_GROWTH_KIB
