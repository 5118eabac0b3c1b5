"""``relay bench`` / ``python -m bench``: measure the relay against direct and peers.

Examples::

    python -m bench --quick
    python -m bench --systems direct,relay,nginx --scenarios throughput --size 32,1MiB
    python -m bench --target ws://my-service:8080/stream --systems direct,relay
    python -m bench --scenarios connect-rate,throughput --tls none,client,target,both
    python -m bench --scenarios throughput --size 1MiB --write-pattern stream,whole
    python -m bench --relay-url ws://127.0.0.1:8080/ws --api-key KEY --relay-pid 1234
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.plans import (
    SCENARIOS,
    WRITE_PATTERNS,
    auto_in_flight,
    build_plans,
    choices,
    csv_list,
    parse_size,
)
from bench.procs import StartError
from bench.runner import Runner
from bench.systems import SYSTEMS, Context
from bench.tls import TLS_MODES

__all__ = ["auto_in_flight", "build_plans", "main", "parse_size"]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Measure the relay against a direct connection and peer relays.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    p.add_argument(
        "--systems",
        default="direct,relay,nginx,websockets,picows",
        help=f"comma list of {', '.join(SYSTEMS)} (default: all)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma list of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--target",
        help="load-test this ws:// or wss:// target (must echo) "
        "instead of the bench's own echo server; 'direct' then means it",
    )
    p.add_argument("--relay-url", help="use a running relay at this ws:// URL")
    p.add_argument("--api-key", default="bench-key", help="API key sent to the relay")
    p.add_argument(
        "--relay-pid",
        type=int,
        action="append",
        default=[],
        help="PID of an external relay, for its CPU and RSS (repeatable)",
    )
    p.add_argument(
        "--relay-config",
        help="run `relay serve` with this config file instead "
        "of a generated one (its [server] bind gives the port)",
    )
    p.add_argument("--duration", type=float, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per system (default 3)")
    p.add_argument("--connections", type=int, default=1, help="throughput connections")
    p.add_argument(
        "--in-flight",
        type=int,
        help="messages in flight per connection (default: 64, fewer for messages over 64 KiB)",
    )
    p.add_argument("--size", default="32,1MiB", help="throughput message sizes (comma list)")
    p.add_argument("--latency-size", type=parse_size, default=32)
    p.add_argument("--mode", choices=("binary", "text"), default="binary")
    p.add_argument(
        "--write-mode",
        choices=("message", "coalesced"),
        default="message",
        help="load client and echo: one write per message (default, like "
        "WebSocket libraries) or one write per read (stress: relays see batches)",
    )
    p.add_argument(
        "--tls",
        type=choices(TLS_MODES),
        default=["none"],
        help="TLS modes for throughput and connect-rate (comma list of none, client: wss:// "
        "from the load client, target: a wss:// echo target, both); default none",
    )
    p.add_argument(
        "--tls-dir",
        help="keep the test CA, certificate and key here (reused if present), e.g. to "
        "configure an external relay (--relay-url wss://...) with them",
    )
    p.add_argument(
        "--write-pattern",
        type=choices(WRITE_PATTERNS),
        default=["stream"],
        help="throughput echo writes (comma list): stream = each read's part of a frame "
        "echoed as it arrives (default), whole = each message echoed in one write once "
        "complete, as a WebSocket library (Node ws) does; the client always writes each "
        "message in one call",
    )
    p.add_argument("--sessions", help="idle session counts (default 1000,10000; quick 500)")
    p.add_argument(
        "--connect-concurrency", type=int, default=8, help="parallel openers in connect-rate"
    )
    p.add_argument(
        "--quick", action="store_true", help="short runs (under 2 minutes in all) for a first look"
    )
    p.add_argument("--out", default="bench-results", help="directory for results.json/.png")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument(
        "--idle-poll",
        action="store_true",
        help="hold /dev/cpu_dma_latency at 0 during the run (root): idle cores "
        "poll instead of halting, so cross-core wake-ups cost less in a VM",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin relay and load to cores")
    return p


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    versions: dict[str, str] = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("websockets", "picows", "uvloop", "trio"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    try:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=5)
        versions["nginx"] = out.stderr.strip().split("/")[-1]
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "versions": versions,
    }


def _soak_argv(argv: list[str] | None) -> list[str] | None:
    """The arguments, when they ask for ``--scenarios soak`` (bench/soak.py), else None."""
    args = list(sys.argv[1:] if argv is None else argv)
    for index, arg in enumerate(args):
        if arg == "--scenarios" and args[index + 1 : index + 2] == ["soak"]:
            return args
        if arg == "--scenarios=soak":
            return args
    return None


def main(argv: list[str] | None = None, *, prog: str = "relay bench") -> int:
    """Run the bench; returns a process exit code (0 when every run succeeded)."""
    soak = _soak_argv(argv)
    if soak is not None:
        # One long run with its own options (--duration 10m, --reload-every ...).
        from bench.soak import main as soak_main

        return soak_main(soak, prog=prog)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from bench.report import render, summarise, write_json

    args = _parser(prog).parse_args(argv)
    quick = args.quick
    args.duration = args.duration if args.duration is not None else (0.6 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.25 if quick else 1.0)
    args.sessions = args.sessions or ("500" if quick else "1000,10000")
    systems = csv_list(args.systems)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        print(
            f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}",
            file=sys.stderr,
        )
        return 2
    if args.target and any(m in ("target", "both") for m in args.tls):
        print("--tls target/both need the bench's own echo target (no --target)", file=sys.stderr)
        return 2
    plans = build_plans(args)
    max_sessions = max([p.params.get("sessions", 0) for p in plans] + [1000])
    ctx = Context(
        target_url=args.target or "",
        relay_cores=None,
        api_key=args.api_key,
        relay_url=args.relay_url,
        relay_pids=args.relay_pid,
        relay_config=args.relay_config,
        max_sessions=max_sessions,
    )
    console = Console()
    if not console.is_terminal:
        # Piped or captured output: wide enough that the tables do not wrap.
        console = Console(width=160)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    task = progress.add_task("starting", total=None)

    def on_progress(label: str, done: int, total: int) -> None:
        progress.update(task, description=label, completed=done, total=total)

    runner = Runner(
        plans,
        systems,
        ctx,
        repeat=args.repeat,
        pin=not args.no_pin,
        external_target=bool(args.target),
        coalesce=args.write_mode == "coalesced",
        idle_poll=args.idle_poll,
        tls_dir=args.tls_dir,
        on_progress=on_progress,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    try:
        with progress:
            raw = runner.run()
    except StartError as exc:  # the echo target itself did not come up
        console.print(f"[red]bench could not start: {exc}[/]")
        return 2
    results: dict[str, Any] = {
        "meta": {
            "command": f"{prog} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip(),
            "started": started,
            "elapsed_s": round(time.monotonic() - t0, 1),
            "machine": _machine(),
            "idle_poll": runner.idle_poll_state,
            "pinning": {
                "load_cores": sorted(runner.load_cores or []),
                "relay_cores": sorted(runner.relay_cores or []),
            },
            "options": {k: v for k, v in vars(args).items() if k != "relay_pid"},
            "target": ctx.target_url if args.target else "bench echo server",
            **({"tls": runner.tls_info} if runner.tls_info else {}),
        },
        **raw,
    }
    summarise(results["plans"])
    out = Path(args.out)
    write_json(results, out / "results.json")
    render(results, console)
    if not args.no_chart:
        from bench.chart import write_chart

        if write_chart(results, out / "results.png"):
            console.print(f"chart: {out / 'results.png'}")
    console.print(f"results: {out / 'results.json'} ({results['meta']['elapsed_s']} s)")
    failed = any(
        r.get("error") for plan in results["plans"] for runs in plan["runs"].values() for r in runs
    )
    errored = any(info["status"] == "error" for info in results["systems"].values())
    return 1 if failed or errored else 0
