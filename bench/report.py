"""Turning raw runs into medians with min-max: terminal tables, Markdown and the JSON file.

``python -m bench.report results.json`` prints the Markdown tables of a finished run.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["METRICS", "plan_notes", "render", "summarise", "write_json"]

# Share of a core used by processes outside the measurement above which a run is
# flagged: the relay and load sides compete with it for the same two cores.
NOISY = 0.10
DASH = "\u2013"  # en dash, for ranges and empty cells
TIMES = "\u00d7"

# scenario -> [(result key, column header, format)]; the first is the headline metric.
METRICS: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [
        ("rate", "msg/s", "{:,.0f}"),
        ("mb_per_s", "MB/s", "{:,.1f}"),
        ("relay_cpu_us_per_op", "relay CPU µs/msg", "{:.2f}"),
        ("relay_cpu_frac", "relay CPU", "{:.0%}"),
        ("load_cpu_frac", "load CPU", "{:.0%}"),
    ],
    "latency": [
        ("p50_us", "p50 µs", "{:,.0f}"),
        ("p90_us", "p90 µs", "{:,.0f}"),
        ("p99_us", "p99 µs", "{:,.0f}"),
        ("p999_us", "p99.9 µs", "{:,.0f}"),
        ("relay_cpu_us_per_op", "relay CPU µs/msg", "{:.1f}"),
    ],
    "sessions": [
        ("kib_per_session", "relay KiB/session", "{:.1f}"),
        ("relay_rss_after_kib", "relay RSS KiB", "{:,.0f}"),
        ("sessions", "opened", "{:,.0f}"),
        ("rate", "opened/s", "{:,.0f}"),
    ],
    "connect-rate": [
        ("rate", "sessions/s", "{:,.0f}"),
        ("relay_cpu_us_per_op", "relay CPU µs/session", "{:.0f}"),
        ("relay_cpu_frac", "relay CPU", "{:.0%}"),
        ("load_cpu_frac", "load CPU", "{:.0%}"),
        ("failed", "failed", "{:,.0f}"),
    ],
}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(plans: list[dict[str, Any]]) -> None:
    """Add a ``summary`` (median/min/max per metric, the usual limit, errors) per system."""
    for plan in plans:
        plan["summary"] = {}
        for system, runs in plan["runs"].items():
            good = [r for r in runs if "error" not in r]
            summary: dict[str, Any] = {
                "ok_runs": len(good),
                "errors": sorted({r["error"] for r in runs if "error" in r}),
            }
            for key, _, _ in METRICS[plan["scenario"]]:
                values = [float(r[key]) for r in good if r.get(key) is not None]
                summary[key] = _stats(values)
            foreign = [float(r.get("foreign_cpu_frac") or 0.0) for r in good]
            summary["foreign_cpu_frac_max"] = max(foreign) if foreign else None
            limits = Counter(r.get("limit", "-") for r in good)
            summary["limit"] = limits.most_common(1)[0][0] if limits else None
            plan["summary"][system] = summary


def _cell(stats: dict[str, float] | None, fmt: str) -> Text:
    if stats is None:
        return Text(DASH, style="dim")
    text = Text(fmt.format(stats["median"]))
    if stats["n"] > 1 and stats["min"] != stats["max"]:
        text.append(f" {fmt.format(stats['min'])}{DASH}{fmt.format(stats['max'])}", style="dim")
    return text


def plan_notes(plan: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Lines printed under a plan's table: what TLS was negotiated on each hop, and
    the relay's CPU per message or session against nginx's (the issue's ratio)."""
    notes: list[str] = []
    tls = plan.get("tls", "none")
    if tls != "none":
        client = sorted(
            {str(r["tls"]) for runs in plan["runs"].values() for r in runs if r.get("tls")}
        )
        hops = []
        if tls in ("client", "both"):
            hops.append(f"client hop {', '.join(client) or 'not reported'} (load client)")
        if tls in ("target", "both"):
            target = (meta.get("tls") or {}).get("target_hop_negotiated") or []
            hops.append(f"target hop {', '.join(target) or 'not reported'} (echo target)")
        if tls == "client":
            hops.append(f"direct: {', '.join(client) or 'not reported'}")
        notes.append("Negotiated: " + "; ".join(hops) + ".")
    summary = plan.get("summary", {})
    mine = (summary.get("relay") or {}).get("relay_cpu_us_per_op")
    theirs = (summary.get("nginx") or {}).get("relay_cpu_us_per_op")
    if mine and theirs and theirs["median"]:
        unit = "session" if plan["scenario"] == "connect-rate" else "message"
        notes.append(
            f"relay CPU per {unit} / nginx's: {mine['median'] / theirs['median']:.2f}{TIMES} "
            f"({mine['median']:,.0f} / {theirs['median']:,.0f} µs, medians)"
        )
    return notes


def _last_line(text: str) -> str:
    # A start-up failure carries its log's tail (a traceback); its last line says why.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def plan_table(plan: dict[str, Any], systems: dict[str, Any]) -> Table:
    """One table per plan: a row per system, cells ``median min-max``."""
    metrics = METRICS[plan["scenario"]]
    table = Table(title=plan["label"], title_justify="left", header_style="bold")
    table.add_column("system")
    for _, header, _ in metrics:
        table.add_column(header, justify="right")
    with_ratio = plan["scenario"] == "throughput"
    if with_ratio:
        table.add_column(f"{TIMES} direct", justify="right")
    table.add_column("limit")
    head_key = metrics[0][0]
    direct = (plan["summary"].get("direct") or {}).get(head_key)
    for name, info in systems.items():
        summary = plan["summary"].get(name)
        if summary is None:
            status = info.get("status", "?")
            reason = info.get("reason", "")
            cells = [Text(f"{status}: {reason}", style="yellow")]
            cells += [Text("")] * (len(metrics) - 1 + with_ratio + 1)
            table.add_row(name, *cells)
            continue
        if not summary["ok_runs"]:
            error = "; ".join(_last_line(e) for e in summary["errors"])[:100]
            cells = [Text(f"error: {error}", style="red")]
            cells += [Text("")] * (len(metrics) - 1 + with_ratio + 1)
            table.add_row(name, *cells)
            continue
        cells = [_cell(summary[key], fmt) for key, _, fmt in metrics]
        if with_ratio:
            mine = summary.get(head_key)
            ratio = (
                mine["median"] / direct["median"] if mine and direct and direct["median"] else None
            )
            cells.append(Text(f"{ratio:.2f}" if ratio is not None else DASH))
        cells.append(Text(summary.get("limit") or DASH))
        table.add_row(name, *cells)
    return table


def render(results: dict[str, Any], console: Console) -> None:
    """Print every plan's table and the notes about skipped or failed systems."""
    for plan in results["plans"]:
        console.print(plan_table(plan, results["systems"]))
        for note in plan_notes(plan, results.get("meta", {})):
            console.print(note, markup=False)
        noisy = {
            name: summary["foreign_cpu_frac_max"]
            for name, summary in plan["summary"].items()
            if (summary.get("foreign_cpu_frac_max") or 0.0) > NOISY
        }
        if noisy:
            worst = ", ".join(f"{name} {frac:.0%}" for name, frac in noisy.items())
            console.print(
                f"[yellow]other processes used CPU during these runs (up to {worst} of a "
                "core): those figures are not reliable; re-run on a quiet machine[/]"
            )
    for name, info in results["systems"].items():
        if info["status"] != "ok":
            reason = info["reason"] if info["status"] == "skipped" else _last_line(info["reason"])
            console.print(f"[yellow]{name}[/]: {info['status']}: {reason}")
        elif info.get("note"):
            console.print(f"[dim]{name}: {info['note']}[/]")


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write the full results (raw runs included) as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def markdown(results: dict[str, Any]) -> str:
    """The tables as Markdown (for docs/performance.md): ``median (min-max)`` cells."""
    out: list[str] = []
    for plan in results["plans"]:
        metrics = METRICS[plan["scenario"]]
        out += [f"**{plan['label']}**", ""]
        out.append("| system | " + " | ".join(h for _, h, _ in metrics) + " | limit |")
        out.append("|---" * (len(metrics) + 2) + "|")
        for name, info in results["systems"].items():
            summary = plan["summary"].get(name)
            if summary is None or not summary["ok_runs"]:
                why = info["reason"] if summary is None else "; ".join(summary["errors"])
                out.append(f"| {name} | {info['status']}: {_last_line(why)} |")
                continue
            cells = []
            for key, _, fmt in metrics:
                stats = summary[key]
                if stats is None:
                    cells.append(DASH)
                    continue
                cell = fmt.format(stats["median"])
                if stats["n"] > 1 and stats["min"] != stats["max"]:
                    cell += f" ({fmt.format(stats['min'])}{DASH}{fmt.format(stats['max'])})"
                cells.append(cell)
            out.append(f"| {name} | " + " | ".join(cells) + f" | {summary['limit'] or DASH} |")
        noisy = [
            f"{name} {summary['foreign_cpu_frac_max']:.0%}"
            for name, summary in plan["summary"].items()
            if (summary.get("foreign_cpu_frac_max") or 0.0) > NOISY
        ]
        if noisy:
            out += ["", f"Other processes' CPU during these runs, worst run: {', '.join(noisy)}."]
        notes = plan_notes(plan, results.get("meta", {}))
        if notes:
            out += ["", *notes]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
