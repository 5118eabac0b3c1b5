"""The PNG chart: one panel per scenario variant and headline metric, a bar per
system at its median with a min-max whisker."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["write_chart"]

# (scenario, metric key, panel title suffix, higher is better)
PANELS: list[tuple[str, str, str, bool]] = [
    ("throughput", "rate", "msg/s", True),
    ("throughput", "mb_per_s", "MB/s", True),
    ("throughput", "relay_cpu_us_per_op", "relay CPU µs per message", False),
    ("latency", "p50_us", "p50 round trip µs", False),
    ("latency", "p99_us", "p99 round trip µs", False),
    ("sessions", "kib_per_session", "relay KiB per idle session", False),
    ("connect-rate", "rate", "sessions opened/s", True),
    ("connect-rate", "relay_cpu_us_per_op", "relay CPU µs per session", False),
]

COLORS = {
    "direct": "#7f7f7f",
    "relay": "#d62728",
    "nginx": "#2ca02c",
    "websockets": "#1f77b4",
    "picows": "#ff7f0e",
}


def _panels(results: dict[str, Any]) -> list[tuple[str, dict[str, Any], str, str]]:
    out = []
    for plan in results["plans"]:
        for scenario, key, title, _ in PANELS:
            if plan["scenario"] != scenario:
                continue
            has_data = any(
                (summary.get(key) or None) for summary in plan.get("summary", {}).values()
            )
            # MB/s only says something new for large messages.
            if key == "mb_per_s" and plan["params"].get("size", 0) < 65536:
                continue
            if (
                key == "rate"
                and scenario == "throughput"
                and plan["params"].get("size", 0) >= 65536
            ):
                continue
            if has_data:
                out.append((plan["label"], plan, key, title))
    return out


def write_chart(results: dict[str, Any], path: Path) -> bool:
    """Draw the comparison chart to ``path``; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(results)
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (label, plan, key, title) in zip(axes.flat, panels, strict=False):
        names, medians, lows, highs, colors = [], [], [], [], []
        for name, summary in plan["summary"].items():
            stats = summary.get(key)
            if not stats:
                continue
            names.append(name)
            medians.append(stats["median"])
            lows.append(stats["median"] - stats["min"])
            highs.append(stats["max"] - stats["median"])
            colors.append(COLORS.get(name, "#9467bd"))
        xs = range(len(names))
        ax.bar(xs, medians, color=colors, yerr=[lows, highs], capsize=4)
        ax.set_xticks(list(xs), names, rotation=20)
        ax.set_title(f"{label}\n{title}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        for x, value, high in zip(xs, medians, highs, strict=True):
            ax.annotate(
                f"{value:,.3g}" if value < 100 else f"{value:,.0f}",
                (x, value + high),  # above the whisker, not on it
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    meta = results.get("meta", {})
    fig.suptitle(
        f"relay bench · {meta.get('machine', {}).get('cpu', '')} · {meta.get('started', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
