"""The measured variants (plans) from ``relay bench``'s options, and the size and
list parsing they need: kept apart from the command line so that the order of
phases (plain first, then one per TLS mode) lives in one place.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from bench.osutil import raise_nofile
from bench.runner import Plan

__all__ = [
    "SCENARIOS",
    "TLS_SCENARIOS",
    "WRITE_PATTERNS",
    "auto_in_flight",
    "build_plans",
    "choices",
    "csv_list",
    "fmt_size",
    "parse_size",
]

SCENARIOS = ("throughput", "latency", "sessions", "connect-rate")
# Scenarios that also run with TLS; latency and sessions always run plain, once.
TLS_SCENARIOS = ("throughput", "connect-rate")
WRITE_PATTERNS = ("stream", "whole")
_TLS_LABEL = {"client": "TLS client hop", "target": "TLS target hop", "both": "TLS both hops"}
_PATTERN_LABEL = {"stream": "echo streams", "whole": "whole-message writes"}
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20}


def parse_size(text: str) -> int:
    """``32``, ``64KiB``, ``1MiB``, ``1M`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 32, 64KiB, 1MiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def fmt_size(n: int) -> str:
    """Bytes as the shortest exact binary unit."""
    for unit, factor in (("MiB", 2**20), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def choices(allowed: tuple[str, ...]) -> Any:
    """An argparse type: a comma list whose items are all in ``allowed``."""

    def parse(text: str) -> list[str]:
        items = csv_list(text)
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {', '.join(allowed)}")
        return list(dict.fromkeys(items))

    return parse


def auto_in_flight(size: int) -> int:
    """64 in flight for small messages, fewer for large ones (about 4 MiB in flight),
    so a 1 MiB run measures the relay, not how much the kernel can buffer."""
    return max(1, min(64, (4 * 2**20) // max(size, 1)))


def build_plans(args: argparse.Namespace) -> list[Plan]:
    """The measured variants, in order, from the parsed options."""
    scenarios = csv_list(args.scenarios)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    modes: list[str] = list(getattr(args, "tls", None) or ["none"])
    plans: list[Plan] = []
    # The plain phase first (latency and sessions always run in it), then one phase per
    # TLS mode: the runner restarts the systems between phases.
    plain = scenarios if "none" in modes else [s for s in scenarios if s not in TLS_SCENARIOS]
    for scenario in plain:
        plans += _scenario_plans(args, scenario, "none")
    for mode in (m for m in modes if m != "none"):
        for scenario in (s for s in scenarios if s in TLS_SCENARIOS):
            plans += _scenario_plans(args, scenario, mode)
    return plans


def _scenario_plans(args: argparse.Namespace, scenario: str, tls: str) -> list[Plan]:
    plans: list[Plan] = []
    base = {"warmup": args.warmup, "duration": args.duration}
    run_time = args.warmup + args.duration
    suffix = f", {_TLS_LABEL[tls]}" if tls != "none" else ""
    patterns: list[str] = list(getattr(args, "write_pattern", None) or ["stream"])
    if scenario == "throughput":
        for size in (parse_size(s) for s in csv_list(args.size)):
            window = args.in_flight or auto_in_flight(size)
            for pattern in patterns:
                shown = len(patterns) > 1 or pattern != "stream"
                label = (
                    f"throughput {fmt_size(size)} {args.mode}, "
                    f"{args.connections} conn x {window} in flight"
                    + (f", {_PATTERN_LABEL[pattern]}" if shown else "")
                    + suffix
                )
                params = {
                    **base,
                    "size": size,
                    "in_flight": window,
                    "connections": args.connections,
                    "text": args.mode == "text",
                    "coalesce": args.write_mode == "coalesced",
                }
                plans.append(
                    Plan(
                        "throughput",
                        label,
                        params,
                        timeout=run_time + 60,
                        tls=tls,
                        whole=pattern == "whole",
                    )
                )
    elif scenario == "latency":
        label = f"latency {fmt_size(args.latency_size)} {args.mode}, one at a time"
        params = {**base, "size": args.latency_size, "text": args.mode == "text"}
        plans.append(Plan("latency", label, params, timeout=run_time + 60))
    elif scenario == "sessions":
        # A relayed session holds two descriptors in the relay; where the hard
        # open-file limit cannot be lifted (no CAP_SYS_RESOURCE) fewer fit.
        cap = (raise_nofile() - 256) // 2 // 100 * 100
        for asked in (int(c) for c in csv_list(args.sessions)):
            count = min(asked, cap)
            label = f"sessions: {count:,} idle"
            if count < asked:
                label += f" (capped from {asked:,}: open-file limit)"
            plans.append(
                Plan("sessions", label, {"sessions": count}, fresh=True, timeout=60 + count / 50)
            )
    elif scenario == "connect-rate":
        label = f"connect-rate, {args.connect_concurrency} parallel openers{suffix}"
        params = {**base, "concurrency": args.connect_concurrency}
        plans.append(Plan("connect-rate", label, params, timeout=run_time + 60, tls=tls))
    return plans
