"""The orchestrator: starts the echo target, the load worker and the systems, then
measures every plan on every system interleaved (A B C A B C ...).

Interleaving spreads slow drifts of the machine (thermal, noisy neighbours, page
cache) over all systems instead of charging them to whichever ran last.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.osutil import hold_idle_poll, process_tree, split_cores
from bench.procs import StartError, spawn, stop_process, wait_ready_line
from bench.systems import SYSTEMS, Context, Running

__all__ = ["Plan", "Runner", "saturation"]

SATURATED = 0.9


@dataclass
class Plan:
    """One measured variant of a scenario, e.g. throughput at 32 B."""

    scenario: str
    label: str
    params: dict[str, Any]
    fresh: bool = False  # restart the system before every run (memory per session)
    timeout: float = 120.0


@dataclass
class SystemState:
    """A requested system: its status and, while it runs, its process handles."""

    name: str
    status: str = "pending"  # ok | skipped | error
    reason: str = ""
    running: Running | None = None
    info: dict[str, Any] = field(default_factory=dict)


def saturation(run: dict[str, Any], load_cores: int) -> str:
    """Which side was the limit in a run: relay, load, both, or '-' (neither)."""
    relay = (run.get("relay_cpu_frac") or 0.0) >= SATURATED
    client, target = run.get("client_cpu_s", 0.0), run.get("target_cpu_s", 0.0)
    wall = run.get("wall_s") or 1.0
    # Client and echo are one process each, so with >= 2 load cores either one can
    # saturate alone; with one core they saturate together.
    usable = min(load_cores, 2)
    load = (client + target) / wall >= SATURATED * usable or max(client, target) / wall >= SATURATED
    return {(True, True): "both", (True, False): "relay", (False, True): "load"}.get(
        (relay, load), "-"
    )


class Worker:
    """The long-lived load worker process (``bench.loadgen``) on the load cores."""

    def __init__(self, cores: set[int] | None, logdir: Path) -> None:
        self.cores = cores
        self.log = logdir / "loadgen.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as fh:
            return spawn(
                [sys.executable, "-m", "bench.loadgen"], self.cores, fh, stdin=-1, load_side=True
            )

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one command; a hung or dead worker is replaced and the run reported failed."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            tail = self.log.read_text(errors="replace")[-600:].strip()
            return {"error": f"load worker failed or timed out: {tail or 'no output'}"}
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        """End the worker (closing stdin ends its loop)."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


class Runner:
    """Runs ``plans`` against ``systems`` and returns the raw results."""

    def __init__(
        self,
        plans: list[Plan],
        systems: list[str],
        ctx: Context,
        *,
        repeat: int,
        pin: bool = True,
        external_target: bool = False,
        coalesce: bool = False,
        idle_poll: bool = False,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.plans = plans
        self.states = [SystemState(name) for name in systems]
        self.ctx = ctx
        self.repeat = repeat
        self.external_target = external_target
        self.coalesce = coalesce
        self.idle_poll = idle_poll
        self.idle_poll_state = "off"
        self.load_cores, self.relay_cores = split_cores() if pin else (None, None)
        ctx.relay_cores = self.relay_cores
        self.on_progress = on_progress or (lambda label, done, total: None)
        self.target_pids: list[int] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-")

    @property
    def total_runs(self) -> int:
        """How many measurements the run will make (for the progress bar)."""
        usable = [s for s in self.states if s.status in ("pending", "ok")]
        return len(self.plans) * self.repeat * len(usable)

    def _check_systems(self) -> None:
        for state in self.states:
            spec = SYSTEMS.get(state.name)
            if spec is None:
                state.status, state.reason = "error", "unknown system"
                continue
            reason = spec.unavailable(self.ctx)
            if reason:
                state.status, state.reason = "skipped", reason

    def _start(self, state: SystemState) -> None:
        try:
            state.running = SYSTEMS[state.name].start(self.ctx)
        except (StartError, OSError) as exc:
            state.status, state.reason = "error", f"failed to start: {exc}"
            state.running = None
            return
        state.status = "ok"
        state.info = {"url": state.running.url, "note": state.running.note}

    def _stop(self, state: SystemState) -> None:
        if state.running is not None:
            state.running.stop()
            state.running = None

    def _start_echo(self, stack: list[subprocess.Popen[bytes]]) -> None:
        log = Path(self.tmp.name) / "echo.log"
        with log.open("wb") as fh:
            cmd = [sys.executable, "-m", "bench.echo", "--port", "0"]
            if self.coalesce:
                cmd.append("--coalesce")
            proc = spawn(cmd, self.load_cores, fh, load_side=True)
        stack.append(proc)
        port = wait_ready_line(proc, log)
        self.ctx.target_url = f"ws://127.0.0.1:{port}/"
        self.target_pids = [proc.pid]

    def run(self) -> dict[str, Any]:
        """Measure everything; returns ``{"systems": ..., "plans": [...]}``."""
        owned: list[subprocess.Popen[bytes]] = []
        worker = Worker(self.load_cores, Path(self.tmp.name))
        saved = os.sched_getaffinity(0)
        poll_fd = hold_idle_poll() if self.idle_poll else None
        if self.idle_poll:
            self.idle_poll_state = "on" if poll_fd is not None else "not permitted"
        if self.load_cores:
            # This thread (and the progress display's thread it starts) stays off the
            # relay core; restored afterwards for callers that embed the bench.
            os.sched_setaffinity(0, self.load_cores)
        try:
            if not self.external_target:
                self._start_echo(owned)
            self._check_systems()  # after the echo: some checks depend on the target URL
            for state in self.states:
                if state.status == "pending":
                    self._start(state)
            plans = self._measure(worker)
        finally:
            worker.close()
            for state in self.states:
                self._stop(state)
            for proc in owned:
                stop_process(proc)
            os.sched_setaffinity(0, saved)
            if poll_fd is not None:
                os.close(poll_fd)
            self.tmp.cleanup()
        systems = {s.name: {"status": s.status, "reason": s.reason, **s.info} for s in self.states}
        return {"systems": systems, "plans": plans}

    def _measure(self, worker: Worker) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        done = 0
        for plan in self.plans:
            runs: dict[str, list[dict[str, Any]]] = {
                s.name: [] for s in self.states if s.status == "ok"
            }
            for rep in range(self.repeat):
                for state in self.states:
                    if state.status != "ok" or state.running is None:
                        continue
                    label = f"{plan.label} · {state.name} · run {rep + 1}/{self.repeat}"
                    self.on_progress(label, done, self.total_runs)
                    result = self._one(plan, state, worker)
                    runs.setdefault(state.name, []).append(result)
                    done += 1
            self.on_progress(plan.label, done, self.total_runs)
            out.append(
                {
                    "scenario": plan.scenario,
                    "label": plan.label,
                    "params": plan.params,
                    "runs": runs,
                }
            )
        return out

    def _one(self, plan: Plan, state: SystemState, worker: Worker) -> dict[str, Any]:
        if plan.fresh and state.running is not None and state.running.procs:
            self._stop(state)
            self._start(state)
        running = state.running
        if running is None:
            return {"error": state.reason or "not running"}
        # Re-read the tree: a relay may fork workers after start-up.
        pids = running.pids
        if running.procs:
            pids = sorted({p for proc in running.procs for p in process_tree(proc.pid)})
        cmd = {
            "scenario": plan.scenario,
            "url": running.url,
            "connect": running.connect,
            "relay_pids": pids,
            "target_pids": self.target_pids,
            **plan.params,
        }
        result = worker.request(cmd, plan.timeout)
        if "error" not in result:
            result["limit"] = saturation(result, len(self.load_cores or {0}))
        return result
