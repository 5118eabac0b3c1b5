"""Prometheus metrics for ``GET /metrics``.

Event counters (connects, closes, dial latency) are incremented where they
happen; byte and frame totals are not counted on the data path at all: each
hop already keeps its own counts, and a collector adds up the live sessions'
counts with those of finished sessions at scrape time.  Label values are
bounded: outcomes are an enum, close codes are grouped, agents come from the
configuration; no URL or key is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.wire.closecodes import Outcome

__all__ = ["CONTENT_TYPE", "Metrics", "TrafficSource", "code_label", "trio_task_count"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DIRECTIONS = ("client_to_target", "target_to_client")


def code_label(code: int | None) -> str:
    """A bounded label for a close code: registered codes as they are, ranges grouped."""
    if code is None:
        return "none"
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


class TrafficSource(Protocol):
    """Something that knows how much it relayed (a live session)."""

    def traffic(self) -> tuple[int, int, int, int]:
        """Bytes and frames so far: client→target bytes, target→client bytes,
        client→target frames, target→client frames."""
        ...


class _TrafficCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        totals = list(metrics.finished_traffic)
        live = list(metrics.live_sessions())
        for session in live:
            for index, value in enumerate(session.traffic()):
                totals[index] += value
        sent = CounterMetricFamily(
            "relay_bytes", "Bytes relayed, by direction", labels=["direction"]
        )
        frames = CounterMetricFamily(
            "relay_frames", "Frames relayed, by direction", labels=["direction"]
        )
        for index, direction in enumerate(DIRECTIONS):
            sent.add_metric([direction], totals[index])
            frames.add_metric([direction], totals[index + 2])
        yield sent
        yield frames
        yield GaugeMetricFamily("relay_sessions_active", "Open relay sessions", value=len(live))
        draining = GaugeMetricFamily("relay_draining", "1 while the gateway drains for shutdown")
        draining.add_metric([], 1 if metrics.draining() else 0)
        yield draining
        healthy = GaugeMetricFamily(
            "relay_agent_healthy", "1 when the agent is in selection", labels=["agent", "kind"]
        )
        for slug, kind, ok in metrics.agent_health():
            healthy.add_metric([slug, kind], 1 if ok else 0)
        yield healthy
        yield CounterMetricFamily(
            "relay_limits_backend_errors",
            "Failed calls to the shared limits backend (Redis)",
            value=metrics.backend_errors(),
        )


def trio_task_count() -> int | None:
    """Tasks alive in the calling Trio run (walked from the root task); None outside Trio.

    A leak of tasks (a session's pump, a health check of a removed agent)
    shows here long before it shows in memory.
    """
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return None
    if root is None:
        return None
    count = 0
    pending = [root]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


class _TaskCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        count = trio_task_count()
        if count is not None:
            yield GaugeMetricFamily(
                "relay_trio_tasks", "Trio tasks alive in this process", value=count
            )


class ParserStats(Protocol):
    """What the parser API app counts (parser_api.app.ParserApp)."""

    active: int
    requests: dict[tuple[str, bool], int]
    refused: dict[str, int]


class _ParserCollector(Collector):
    def __init__(self, app: ParserStats) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        app = self._app
        yield GaugeMetricFamily(
            "parser_connections_active", "Open parser API connections", value=app.active
        )
        requests = CounterMetricFamily(
            "parser_requests",
            "Parser API requests answered, by action and ok",
            labels=["action", "ok"],
        )
        for (action, ok), count in sorted(app.requests.items()):
            requests.add_metric([action, "true" if ok else "false"], count)
        yield requests
        refused = CounterMetricFamily(
            "parser_connections_refused",
            "Parser API connections refused, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(app.refused.items()):
            refused.add_metric([reason], count)
        yield refused


class Metrics:
    """One gateway's metrics, in a registry of its own (several gateways can
    share a process, e.g. in tests)."""

    def __init__(
        self,
        *,
        live_sessions: Callable[[], Iterable[TrafficSource]] = tuple,
        agent_health: Callable[[], Iterable[tuple[str, str, bool]]] = tuple,
        draining: Callable[[], bool] = lambda: False,
        backend_errors: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.live_sessions = live_sessions
        self.agent_health = agent_health
        self.draining = draining
        self.backend_errors = backend_errors
        self.finished_traffic = [0, 0, 0, 0]
        self.connects = Counter(
            "relay_connects",
            "Connect attempts by outcome: connected, or why not",
            ["outcome"],
            registry=self.registry,
        )
        # Every outcome shows, zero until it happens.  The children are kept:
        # ``labels()`` takes a lock and builds a key on every call, per session.
        self._connect_counts = {
            outcome: self.connects.labels(outcome)
            for outcome in ("connected", *(o.value for o in Outcome))
        }
        self.closes = Counter(
            "relay_close_codes_sent",
            "Close frames sent to each side (relayed or the gateway's own), by code",
            ["side", "code"],
            registry=self.registry,
        )
        self.closes_skipped = Counter(
            "relay_closes_skipped",
            "Sides disconnected without the close they were owed: a frame to them "
            "(the rest of a cut-short send or of a frame over 64 KiB) could not be "
            "finished within close_timeout",
            ["side"],
            registry=self.registry,
        )
        for side in ("client", "target"):
            self.closes_skipped.labels(side)
        self.sessions = Counter(
            "relay_sessions_ended",
            "Sessions ended, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self._session_counts: dict[str, Counter] = {}
        self._close_counts: dict[tuple[str, str], Counter] = {}
        self.rate_limited = Counter(
            "relay_rate_limit_rejections",
            "Connects refused by a key's token bucket",
            registry=self.registry,
        )
        self.reloads = Counter(
            "relay_config_reloads",
            "Configuration reloads (SIGHUP, relay reload), by result: ok, or invalid",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "invalid"):
            self.reloads.labels(result)
        self.dial_seconds = Histogram(
            "relay_dial_seconds",
            "Time to open the target WebSocket (resolve, connect, TLS, upgrade)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.registry.register(_TrafficCollector(self))
        self.registry.register(_TaskCollector())

    def watch_parser(self, app: ParserStats) -> None:
        """Export the parser API's counters too."""
        self.registry.register(_ParserCollector(app))

    def session_finished(self, traffic: tuple[int, int, int, int]) -> None:
        """Fold a finished session's traffic into the totals."""
        for index, value in enumerate(traffic):
            self.finished_traffic[index] += value

    def connect_outcome(self, outcome: str) -> None:
        """Count a connect attempt's outcome ("connected", or an Outcome's value)."""
        child = self._connect_counts.get(outcome)
        if child is None:
            child = self._connect_counts[outcome] = self.connects.labels(outcome)
        child.inc()

    def session_ended(self, outcome: str) -> None:
        """Count a session that ended with ``outcome``."""
        child = self._session_counts.get(outcome)
        if child is None:
            child = self._session_counts[outcome] = self.sessions.labels(outcome)
        child.inc()

    def close_sent(self, side: str, code: int | None) -> None:
        """Count a close frame sent to ``side`` ("client" or "target")."""
        key = (side, code_label(code))
        child = self._close_counts.get(key)
        if child is None:
            child = self._close_counts[key] = self.closes.labels(*key)
        child.inc()

    def render(self) -> bytes:
        """The exposition text."""
        return bytes(generate_latest(self.registry))
