"""Clients that vanish, over real sockets: the target's connection is closed and
everything the session held is freed (counters, per-key slots, file descriptors).
Timeouts other than the one a case is about are far beyond the hang guard."""

from __future__ import annotations

import json
import os
import struct

import pytest
import trio

from relay.config import KeyConfig
from tests.faults.misbehaving import Misbehaving, reset
from tests.support import wsp
from tests.support.conditions import eventually
from tests.support.gateway import KEY, Running, connect_json, make_config, start_gateway
from tests.support.target import TargetServer

PATIENT = {"close_timeout": 300.0, "dial_timeout": 300.0, "connect_timeout": 300.0}
KEYS = [KeyConfig(key=KEY, rate=1000, burst=1000, max_sessions=5)]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _all_freed(running: Running, fds: int) -> None:
    stats, slots = running.gateway.registry.stats, running.gateway.slots
    await eventually(
        lambda: (
            stats.sessions_active == 0
            and len(running.gateway.registry.sessions) == 0
            and slots.held() == 0
            and _open_fds() <= fds
        ),
        "the session's resources (and sockets) to be freed",
    )


async def _drop(client: wsp.WsprotoStream, rst: bool) -> None:
    if rst:
        reset(client.stream)  # type: ignore[arg-type]
    await trio.aclose_forcefully(client.stream)


@pytest.fixture
async def patient(nursery: trio.Nursery) -> Running:
    return await start_gateway(nursery, make_config(keys=KEYS, **PATIENT))


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("mid_frame", [False, True], ids=["idle", "mid-frame"])
async def test_client_drops_target_is_closed_and_session_freed(
    patient: Running, target: TargetServer, rst: bool, mid_frame: bool
) -> None:
    fds = _open_fds()
    client = await wsp.connect(patient.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/echo")))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    await client.send(wsp.TextMessage("hello"))
    assert await client.next_message() == "hello"
    if mid_frame:  # the first half of a masked 1000-byte frame
        await client.send_raw(struct.pack("!BBH", 0x82, 0x80 | 126, 1000) + b"mask" + b"x" * 500)
    await _drop(client, rst)
    record = target.connections[0]
    await record.ended.wait()
    assert (record.close_code, record.close_reason) == (1011, "client connection lost")
    assert record.messages == ["hello"]  # the half frame never reached the target
    await _all_freed(patient, fds)


async def test_client_drops_while_the_target_floods(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    """The relay is blocked writing to a client that reads nothing; the client goes.
    The target, told 1011, keeps flooding instead of answering: it is cut off after
    close_timeout (the relay reads and discards meanwhile)."""
    patient = await start_gateway(
        nursery, make_config(keys=KEYS, **{**PATIENT, "close_timeout": 1.0})
    )
    fds = _open_fds()
    client = await wsp.connect(patient.ws_url)
    url = f"{target.url}/flood?total={1 << 34}&size=65536"
    await client.send(wsp.TextMessage(connect_json(url)))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    # A few hundred KiB fill the (still small) socket buffers: the relay then waits to write.
    await eventually(lambda: target.connections[0].sent_bytes > 1 << 17, "the flood to start")
    await _drop(client, rst=False)
    await target.connections[0].ended.wait()
    await _all_freed(patient, fds)


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_client_drops_before_its_connect_message(patient: Running, rst: bool) -> None:
    """Freed at once, not at the connect deadline (300 s here)."""
    fds = _open_fds()
    client = await wsp.connect(patient.ws_url)
    await eventually(lambda: len(patient.gateway.registry.sessions) == 1, "the session to start")
    await _drop(client, rst)
    await _all_freed(patient, fds)
    assert patient.gateway.registry.stats.outcomes == {"client_lost": 1}


async def test_client_drops_while_the_target_is_dialed(nursery: trio.Nursery) -> None:
    """The relay does not read the client while it dials (the client may pipeline
    frames): a client that leaves then is noticed when the dial ends, here at the
    dial timeout, and the half-open target connection is closed too."""

    async def silent(server: Misbehaving, stream: trio.SocketStream) -> None:
        await server.wait_for_peer_close(stream)

    target = await nursery.start(Misbehaving(silent).serve)
    running = await start_gateway(
        nursery, make_config(keys=KEYS, **{**PATIENT, "dial_timeout": 1.0})
    )
    fds = _open_fds()
    client = await wsp.connect(running.ws_url)
    await client.send(wsp.TextMessage(connect_json(f"{target.url}/")))
    await target.new_connection.wait()
    await _drop(client, rst=True)
    await target.closed_by_peer[0].wait()
    await _all_freed(running, fds)
