"""``relay bench --scenarios soak --duration 10m``: a long run that shows whether the relay leaks.

A real ``relay serve`` process gets, for the whole duration, a steady mix
(bench/soakmix.py): sessions opened and closed at a fixed rate, idle ones held
for a while, 32 B and 1 MiB messages, clients and targets vanishing in the
middle of a message, refused keys, bad connect messages; and a reload (SIGHUP,
the file's keys changed) every ``--reload-every`` seconds.  Every
``--sample-every`` seconds it records the relay's RSS and open descriptors
(from /proc), its Trio task count and open sessions (from /metrics).  The
report gives each series' growth after the warm-up (a least-squares slope per
minute, and first versus last quarter), the values once the load has stopped
against those before it started, and a PNG of the four series.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from bench.soakmix import KINDS, Endpoint, Target, run_kind

__all__ = ["main", "parse_duration"]

KEY = "soak-key"
# Sessions started per second of each kind (about 42/s in all).
MIX = {
    "small": 20.0,
    "large": 1.0,
    "idle": 4.0,
    "client_vanishes": 4.0,
    "target_vanishes": 4.0,
    "refused_key": 4.0,
    "bad_connect": 4.0,
}
FILE = """# written by relay bench --scenarios soak
[server]
bind = "127.0.0.1:0"

[targets]
allow_private = true

[[keys]]
name = "soak"
key = "{key}"
rate = 1000000.0
burst = 1000000
max_sessions = 100000
{extra}"""


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 10m)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} --scenarios soak", description=__doc__)
    p.add_argument("--scenarios", default="soak", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=parse_duration, default=600.0, help="load time (10m)")
    p.add_argument("--warmup", type=parse_duration, default=60.0, help="excluded from growth")
    p.add_argument("--reload-every", type=parse_duration, default=60.0, help="SIGHUP period")
    p.add_argument("--sample-every", type=parse_duration, default=2.0, help="sampling period")
    p.add_argument("--idle-for", type=parse_duration, default=20.0, help="idle sessions' life")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the mix's rates")
    p.add_argument("--out", default="bench-results", help="directory for soak.json/.png")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    return p


@attrs.define
class Relay:
    """The relay process under test."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    config: Path

    def rss_mib(self) -> float:
        """Resident set size, MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        """Open descriptors."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def reload(self, extra: str) -> None:
        """Rewrite the file (the soak key, plus ``extra``) and send SIGHUP."""
        self.config.write_text(FILE.format(key=KEY, extra=extra))
        self.process.send_signal(signal.SIGHUP)


def _start_relay(out: Path) -> Relay:
    config = out / "soak-relay.toml"
    config.write_text(FILE.format(key=KEY, extra=""))
    log = (out / "soak-relay.log").open("wb")
    argv = [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)]
    process = subprocess.Popen([*argv, "--log-level", "warning"], stdout=log, stderr=log)
    banner = out / "soak-relay.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"relay listening on ws://([\d.]+):(\d+)/ws", banner.read_text())
        if found:
            return Relay(process, found.group(1), int(found.group(2)), config)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the relay did not start; see {banner}")


async def _scrape(relay: Relay) -> dict[str, float]:
    """``relay_trio_tasks`` and ``relay_sessions_active`` from /metrics."""
    stream = await trio.open_tcp_stream(relay.host, relay.port)
    async with stream:
        request = f"GET /metrics HTTP/1.1\r\nHost: {relay.host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        body = b""
        while chunk := await stream.receive_some(65536):
            body += chunk
    values: dict[str, float] = {}
    for name in ("relay_trio_tasks", "relay_sessions_active", "relay_config_reloads_total"):
        pattern = rf"^{name}(?:\{{result=\"ok\"\}})? ([\d.e+]+)$"
        found = re.search(pattern.encode(), body, re.MULTILINE)
        if found:
            values[name] = float(found.group(1))
    return values


@attrs.define
class Soak:
    """One soak run's state."""

    args: argparse.Namespace
    relay: Relay
    endpoint: Endpoint
    samples: list[dict[str, float]] = attrs.Factory(list)
    results: dict[str, dict[str, int]] = attrs.Factory(dict)
    reloads: int = 0
    reload_times: list[float] = attrs.Factory(list)
    started: float = 0.0

    async def sample(self, phase: str) -> None:
        # Read before the scrape, whose own connection would count as a descriptor.
        rss, fds = self.relay.rss_mib(), float(self.relay.fds())
        values = await _scrape(self.relay)
        self.samples.append(
            {
                "t": trio.current_time() - self.started,
                "rss_mib": rss,
                "fds": fds,
                "tasks": values.get("relay_trio_tasks", float("nan")),
                "sessions": values.get("relay_sessions_active", float("nan")),
                "reloads_ok": values.get("relay_config_reloads_total", float("nan")),
                "loaded": 1.0 if phase == "load" else 0.0,
            }
        )

    async def sampler(self) -> None:
        while True:
            await self.sample("load")
            await trio.sleep(self.args.sample_every)

    async def reloader(self) -> None:
        while True:
            await trio.sleep(self.args.reload_every)
            self.reloads += 1
            self.reload_times.append(trio.current_time() - self.started)
            # Alternately add and remove a second key: every reload changes the key set.
            self.relay.reload("" if self.reloads % 2 == 0 else '\n[[keys]]\nkey = "rotating"\n')

    async def one(self, kind: str, limit: trio.CapacityLimiter) -> None:
        async with limit:
            try:
                result = await run_kind(kind, self.endpoint)
            except Exception as exc:  # counted: an unexpected ending is a finding
                result = f"{type(exc).__name__}: {exc}"
        outcome = "expected" if result.startswith(KINDS[kind]) else result[:120]
        tally = self.results.setdefault(kind, {})
        tally[outcome] = tally.get(outcome, 0) + 1

    async def opener(self, kind: str, rate: float, until: float) -> None:
        limit = trio.CapacityLimiter(400)  # bounds the driver if the relay slows down
        async with trio.open_nursery() as nursery:
            next_at = trio.current_time()
            while next_at < until:
                await trio.sleep_until(next_at)
                nursery.start_soon(self.one, kind, limit)
                next_at += 1.0 / rate


async def _soak(args: argparse.Namespace, relay: Relay) -> Soak:
    async with trio.open_nursery() as nursery:
        target: Target = await nursery.start(Target().serve)
        endpoint = Endpoint(relay.host, relay.port, KEY, target.port, idle_seconds=args.idle_for)
        soak = Soak(args, relay, endpoint, started=trio.current_time())
        await soak.sample("before")
        until = trio.current_time() + args.duration
        async with trio.open_nursery() as background:
            background.start_soon(soak.sampler)
            background.start_soon(soak.reloader)
            async with trio.open_nursery() as load:
                for kind, rate in MIX.items():
                    load.start_soon(soak.opener, kind, rate * args.rate_scale, until)
            background.cancel_scope.cancel()
        # Load over: let closing finish (and the last scrape's HTTP connection, whose
        # handler lingers a few seconds), then the values everything must return to.
        await trio.sleep(10.0)
        await soak.sample("after")
        nursery.cancel_scope.cancel()
    return soak


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60.0 * cov / var if var else 0.0


def summarise(soak: Soak) -> dict[str, Any]:
    """Growth after warm-up, and before/after values, for each series."""
    args = soak.args
    # Samples while sessions are being started (not the tail where idle ones finish).
    load = [s for s in soak.samples if s["loaded"] and args.warmup <= s["t"] <= args.duration]
    before, after = soak.samples[0], soak.samples[-1]
    series: dict[str, Any] = {}
    half = args.warmup + (args.duration - args.warmup) / 2
    for name in ("rss_mib", "fds", "tasks", "sessions"):
        points = [(s["t"], s[name]) for s in load]
        second_half = [(t, v) for t, v in points if t >= half]
        quarter = max(1, len(points) // 4)
        first = sum(v for _, v in points[:quarter]) / quarter if points else 0.0
        last = sum(v for _, v in points[-quarter:]) / quarter if points else 0.0
        series[name] = {
            "before_load": before[name],
            "after_load": after[name],
            "slope_per_min_after_warmup": round(_slope_per_minute(points), 4),
            # A step while the allocator reaches its high-water mark weighs on the slope
            # above; a leak keeps climbing in the second half too.
            "slope_per_min_second_half": round(_slope_per_minute(second_half), 4),
            "first_quarter_mean": round(first, 3),
            "last_quarter_mean": round(last, 3),
            "max": max((v for _, v in points), default=0.0),
        }
    started = {kind: sum(t.values()) for kind, t in soak.results.items()}
    unexpected = {
        kind: {k: v for k, v in tally.items() if k != "expected"}
        for kind, tally in soak.results.items()
        if set(tally) - {"expected"}
    }
    return {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sessions_by_kind": started,
        "sessions_total": sum(started.values()),
        "unexpected_endings": unexpected,
        "reloads_sent": soak.reloads,
        "reload_times_s": [round(t, 1) for t in soak.reload_times],
        "reloads_ok_counted": after["reloads_ok"],
        "series": series,
    }


def plot(soak: Soak, path: Path) -> None:
    """The four series over time, warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak.samples
    minutes = [s["t"] / 60 for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    labels = {
        "rss_mib": "RSS (MiB)",
        "fds": "open descriptors",
        "tasks": "Trio tasks",
        "sessions": "open sessions",
    }
    for axis, (name, label) in zip(axes, labels.items(), strict=True):
        axis.plot(minutes, [s[name] for s in samples], linewidth=1)
        axis.set_ylabel(label)
        axis.axvspan(0, soak.args.warmup / 60, color="0.9")
        for at in soak.reload_times:
            axis.axvline(at / 60, color="tab:orange", linewidth=0.6, alpha=0.6)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    reload_every = soak.args.reload_every
    axes[-1].set_xlabel(f"minutes (shaded: warm-up; orange: a reload, every {reload_every:g} s)")
    total = sum(sum(t.values()) for t in soak.results.values())
    figure.suptitle(f"relay soak: {total} sessions in {soak.args.duration / 60:g} min")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None, *, prog: str = "relay bench") -> int:
    """Run the soak; writes soak.json (and soak.png) to ``--out``."""
    args = _parser(prog).parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    relay = _start_relay(out)
    try:
        soak = trio.run(_soak, args, relay)
    finally:
        relay.process.send_signal(signal.SIGTERM)
        try:
            relay.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            relay.process.kill()
    summary = summarise(soak)
    (out / "soak.json").write_text(
        json.dumps({"summary": summary, "samples": soak.samples}, indent=1) + "\n"
    )
    if not args.no_chart:
        plot(soak, out / "soak.png")
    print(json.dumps(summary, indent=2))
    return 1 if summary["unexpected_endings"] else 0
