"""``python -m bench.loadcompare``: how fast is each candidate load side?

Compares the bench's own echo + load client (in both write modes) with a Node
``ws`` echo + client (``bench/node``; run ``npm install`` there first), directly
and through the picows peer relay, pinned like the bench (load on one core, relay
on the other). Reports messages/s and the load side's CPU per message: the
cheaper the load side, the more of the machine is left to show the relay's cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.osutil import cpu_ns, split_cores
from bench.procs import spawn, stop_process, wait_ready_line

NODE_DIR = Path(__file__).resolve().parent / "node"
LOADS = ("python", "python-coalesced", "node")


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node not installed"
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        return f"run `npm install` in {NODE_DIR}"
    return None


def _start(cmd: list[str], cores: set[int] | None, tmp: Path) -> tuple[Any, int]:
    log = tmp / f"log{time.monotonic_ns()}"
    with log.open("wb") as fh:
        # The glibc malloc settings are for the bench's Python load side only.
        proc = spawn(cmd, cores, fh, load_side=cmd[0] == sys.executable and "bench.echo" in cmd)
    return proc, wait_ready_line(proc, log)


def measure(load: str, size: int, via_relay: bool, seconds: float) -> dict[str, Any]:
    """One run of one load side; returns rates and CPU per message."""
    load_cores, relay_cores = split_cores()
    node = load == "node"
    echo_cmd = ["node", str(NODE_DIR / "echo.js")] if node else [sys.executable, "-m", "bench.echo"]
    if load == "python-coalesced":
        echo_cmd.append("--coalesce")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        echo, echo_port = _start(echo_cmd, load_cores, tmp)
        relay = None
        try:
            url = target = f"ws://127.0.0.1:{echo_port}/"
            if via_relay:
                relay, port = _start(
                    [sys.executable, "-m", "bench.peers.picows_relay"], relay_cores, tmp
                )
                url = f"ws://127.0.0.1:{port}/ws"
            window = 64 if size < 65536 else 4
            before = cpu_ns([echo.pid]), cpu_ns([relay.pid]) if relay else 0
            if node:
                cmd = ["node", str(NODE_DIR / "load.js"), url, str(size), str(window), "1"]
                cmd += [str(seconds)] + ([target] if via_relay else [])
            else:
                request = {
                    "scenario": "throughput", "url": url, "size": size, "in_flight": window,
                    "connections": 1, "warmup": 1, "duration": seconds,
                    "connect": {"apiKey": "k", "url": target} if via_relay else None,
                    "coalesce": load == "python-coalesced",
                }  # fmt: skip
                cmd = [sys.executable, "-c", _PY_LOAD, json.dumps(request)]
            pin = ",".join(map(str, sorted(load_cores))) if load_cores else "-"
            out = subprocess.run(
                [sys.executable, "-m", "bench.pin", pin, "--", *cmd],
                capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
            ).stdout  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            # Whole-run echo/relay CPU (not just the window): fine for a ratio per message.
            after = cpu_ns([echo.pid]), cpu_ns([relay.pid]) if relay else 0
        finally:
            for proc in (echo, relay):
                if proc is not None:
                    stop_process(proc)
    count = result["count"]
    return {
        "load": load,
        "size": size,
        "via": "picows" if via_relay else "direct",
        "msg_per_s": count / result["wall_s"],
        "client_us_per_msg": result["client_cpu_s"] * 1e6 / count,
        "echo_us_per_msg_run": (after[0] - before[0]) / 1e3 / count,
        "relay_us_per_msg_run": (after[1] - before[1]) / 1e3 / count if via_relay else None,
    }


_PY_LOAD = (
    "import json, sys; from bench.loadgen import run_command; from bench.osutil import run_loop;"
    "print(json.dumps(run_loop(run_command(json.loads(sys.argv[1])))))"
)


def main() -> None:
    """Run every combination and print one line per run (and JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadcompare")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="also write the runs to this file")
    args = parser.parse_args()
    loads = [x for x in LOADS if x != "node" or _node_ready() is None]
    if "node" not in loads:
        print(f"node skipped: {_node_ready()}")
    rows = []
    for size in (32, 2**20):
        for via in (False, True):
            for _ in range(args.repeat):
                for load in loads:
                    row = measure(load, size, via, args.seconds)
                    rows.append(row)
                    relay = row["relay_us_per_msg_run"]
                    print(
                        f"{load:17} {size:>8} B via {row['via']:6} {row['msg_per_s']:>10,.0f} msg/s"
                        f"  client {row['client_us_per_msg']:8.2f} µs/msg"
                        f"  echo {row['echo_us_per_msg_run']:8.2f} µs/msg"
                        + (f"  relay {relay:8.2f} µs/msg" if relay is not None else ""),
                        flush=True,
                    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
