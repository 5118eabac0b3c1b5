"""The load worker: runs one measurement per command and reports it.

``python -m bench.loadgen`` reads one JSON command per line on stdin and answers
one JSON result per line on stdout. The orchestrator keeps one worker alive for a
whole bench run (pinned to the load cores), so no run pays for interpreter
start-up, and each command gets a fresh event loop.

Every measurement reads the CPU time of the relay's processes, the echo
target's and its own at the start and end of the measured window, so the
report can say who spent what and who was saturated.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from array import array
from typing import Any, NamedTuple

from bench.loadclient import Conn, ConnectError, Endpoint, open_conn
from bench.osutil import cpu_ns, machine_cpu_ns, raise_nofile, rss_kib, run_loop
from bench.wsframes import BINARY, TEXT, encode_frame

Result = dict[str, Any]


def _payload(size: int) -> bytes:
    # ASCII so the same bytes are valid in text mode (relays may check UTF-8).
    return (b"0123456789abcdefghijklmnopqrstuv" * (size // 32 + 1))[:size]


class Snap(NamedTuple):
    """Counters at one instant."""

    time: float
    messages: int
    relay_ns: int
    target_ns: int
    client_ns: int
    machine_ns: int
    steal_ns: int


class Window:
    """CPU and message counters snapshotted around the measured window."""

    def __init__(self, cmd: dict[str, Any]) -> None:
        self.relay_pids: list[int] = cmd.get("relay_pids") or []
        self.target_pids: list[int] = cmd.get("target_pids") or []
        self.me = [os.getpid()]

    def snap(self, count: int) -> Snap:
        """All counters now."""
        machine, steal = machine_cpu_ns()
        return Snap(
            time.perf_counter(),
            count,
            cpu_ns(self.relay_pids),
            cpu_ns(self.target_pids),
            cpu_ns(self.me),
            machine,
            steal,
        )

    def result(self, a: Snap, b: Snap) -> Result:
        """Rates and CPU shares between two snapshots."""
        wall = b.time - a.time
        count = b.messages - a.messages
        relay_s = (b.relay_ns - a.relay_ns) / 1e9
        target_s = (b.target_ns - a.target_ns) / 1e9
        client_s = (b.client_ns - a.client_ns) / 1e9
        # CPU that none of the measured processes used: other programs on the machine
        # (another test run, a build) that make this run's figures unreliable.
        foreign_s = max(0.0, (b.machine_ns - a.machine_ns) / 1e9 - relay_s - target_s - client_s)
        return {
            "wall_s": wall,
            "count": count,
            "rate": count / wall if wall > 0 else 0.0,
            "relay_cpu_s": relay_s,
            "target_cpu_s": target_s,
            "client_cpu_s": client_s,
            "relay_cpu_us_per_op": relay_s * 1e6 / count if count and self.relay_pids else None,
            "relay_cpu_frac": relay_s / wall if wall > 0 and self.relay_pids else None,
            "load_cpu_frac": (target_s + client_s) / wall if wall > 0 else 0.0,
            "foreign_cpu_frac": foreign_s / wall if wall > 0 else 0.0,
            "steal_frac": (b.steal_ns - a.steal_ns) / 1e9 / wall if wall > 0 else 0.0,
        }


async def _open_many(
    endpoint: Endpoint,
    count: int,
    concurrency: int,
    coalesce: bool = False,
    errors: list[str] | None = None,
) -> tuple[list[Conn], int]:
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []
    failed = 0
    first_error: list[str] = errors if errors is not None else []

    async def one() -> None:
        nonlocal failed
        async with sem:
            try:
                conns.append(await open_conn(endpoint, coalesce))
            except ConnectError as exc:
                failed += 1
                if not first_error:
                    first_error.append(str(exc))

    await asyncio.gather(*(one() for _ in range(count)))
    if failed and not conns:
        raise ConnectError(first_error[0])
    return conns, failed


async def throughput(cmd: dict[str, Any], endpoint: Endpoint) -> Result:
    """N connections, W messages in flight each, for ``duration`` seconds."""
    size, window = int(cmd["size"]), int(cmd["in_flight"])
    frame = encode_frame(TEXT if cmd.get("text") else BINARY, _payload(size), masked=True)
    conns, _ = await _open_many(endpoint, int(cmd["connections"]), 64, bool(cmd.get("coalesce")))
    win = Window(cmd)
    try:
        for conn in conns:
            conn.start_pipeline(frame, window)
        await asyncio.sleep(cmd["warmup"])
        a = win.snap(sum(c.count for c in conns))
        await asyncio.sleep(cmd["duration"])
        b = win.snap(sum(c.count for c in conns))
    finally:
        for conn in conns:
            conn.stop()
    res = win.result(a, b)
    res["mb_per_s"] = res["rate"] * size / 1e6
    res["closed_early"] = sum(c.closed for c in conns)
    res["tls"] = conns[0].tls if conns else None
    return res


async def latency(cmd: dict[str, Any], endpoint: Endpoint) -> Result:
    """One connection, one message at a time; round-trip percentiles (HDR histogram)."""
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

    size = int(cmd["size"])
    frame = encode_frame(TEXT if cmd.get("text") else BINARY, _payload(size), masked=True)
    conn = await open_conn(endpoint)
    win = Window(cmd)
    warm: array[int] = array("q")
    try:
        conn.start_ping_pong(frame, warm)
        await asyncio.sleep(cmd["warmup"])
        samples: array[int] = array("q")
        conn.samples = samples  # swap buffers: only the measured window is kept
        a = win.snap(conn.count)
        await asyncio.sleep(cmd["duration"])
        b = win.snap(conn.count)
        conn.samples = None
    finally:
        conn.stop()
    hist = HdrHistogram(1, 60_000_000_000, 3)  # ns, 1 ns .. 60 s, 3 significant digits
    for value in samples:
        hist.record_value(max(1, value))
    res = win.result(a, b)
    res.update(
        {
            f"p{name}_us": hist.get_value_at_percentile(pct) / 1000
            for name, pct in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))
        }
    )
    res["max_us"] = hist.get_max_value() / 1000
    res["mean_us"] = hist.get_mean_value() / 1000
    return res


async def sessions(cmd: dict[str, Any], endpoint: Endpoint) -> Result:
    """Open K idle relayed sessions; the relay's RSS growth divided by K."""
    count = int(cmd["sessions"])
    win = Window(cmd)
    # Warm-up sessions first, so lazy imports and first-use allocations are not
    # charged to the measured ones.
    warm, _ = await _open_many(endpoint, 16, 16)
    for conn in warm:
        conn.stop(graceful=True)
    await asyncio.sleep(0.3)
    rss0 = rss_kib(win.relay_pids)
    target0 = rss_kib(win.target_pids)
    t0 = time.perf_counter()
    errors: list[str] = []
    conns, failed = await _open_many(
        endpoint, count, int(cmd.get("concurrency", 64)), errors=errors
    )
    open_s = time.perf_counter() - t0
    await asyncio.sleep(cmd.get("settle", 0.5))
    rss1 = rss_kib(win.relay_pids)
    target1 = rss_kib(win.target_pids)
    alive = sum(not c.closed for c in conns)
    for conn in conns:
        conn.stop()
    opened = len(conns)
    return {
        "sessions": opened,
        "failed": failed,
        "alive_at_measure": alive,
        "open_s": open_s,
        "rate": opened / open_s if open_s > 0 else 0.0,
        "relay_rss_before_kib": rss0,
        "relay_rss_after_kib": rss1,
        "kib_per_session": (rss1 - rss0) / opened if win.relay_pids and opened else None,
        "target_kib_per_session": (target1 - target0) / opened if opened else None,
        **({"first_error": errors[0]} if errors else {}),
    }


async def connect_rate(cmd: dict[str, Any], endpoint: Endpoint) -> Result:
    """Sessions opened (and closed) per second by ``concurrency`` parallel openers."""
    stop = False
    opened = 0
    failed = 0
    errors: list[str] = []
    negotiated: list[str | None] = []

    async def opener() -> None:
        nonlocal opened, failed
        while not stop:
            try:
                conn = await open_conn(endpoint)
            except ConnectError as exc:
                failed += 1
                errors.append(str(exc))
                await asyncio.sleep(0.01)
                continue
            opened += 1
            if not negotiated:
                negotiated.append(conn.tls)
            conn.stop(graceful=True)

    win = Window(cmd)
    tasks = [asyncio.create_task(opener()) for _ in range(int(cmd.get("concurrency", 8)))]
    try:
        await asyncio.sleep(cmd["warmup"])
        a = win.snap(opened)
        await asyncio.sleep(cmd["duration"])
        b = win.snap(opened)
    finally:
        stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    res = win.result(a, b)
    res["failed"] = failed
    res["tls"] = negotiated[0] if negotiated else None
    if errors:
        res["first_error"] = errors[0]
    return res


SCENARIOS = {
    "throughput": throughput,
    "latency": latency,
    "sessions": sessions,
    "connect-rate": connect_rate,
}


async def run_command(cmd: dict[str, Any]) -> Result:
    """Run one measurement; failures come back as ``{"error": ...}``."""
    endpoint = Endpoint(cmd["url"], cmd.get("connect"), cmd.get("ca_file"))
    try:
        return await SCENARIOS[cmd["scenario"]](cmd, endpoint)
    except (ConnectError, OSError) as exc:
        return {"error": str(exc)}


def main() -> None:
    """Serve commands from stdin until it closes."""
    raise_nofile()
    for line in sys.stdin:
        if not line.strip():
            continue
        result = run_loop(run_command(json.loads(line)))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
