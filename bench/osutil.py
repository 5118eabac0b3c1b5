"""Process accounting and placement, read straight from Linux's /proc.

CPU time comes from ``/proc/PID/task/*/schedstat`` (nanoseconds of on-CPU time
per thread) because ``/proc/PID/stat`` counts in 10 ms ticks, too coarse for
sub-second runs; it falls back to the tick counters where schedstat is absent.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

__all__ = [
    "cpu_ns",
    "hold_idle_poll",
    "machine_cpu_ns",
    "process_tree",
    "raise_nofile",
    "rss_kib",
    "run_loop",
    "split_cores",
]

T = TypeVar("T")
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _task_cpu_ns(pid: int) -> int:
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _stat_cpu_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    # Fields after the parenthesised command name, which may itself contain spaces.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_NS


_HAVE_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def cpu_ns(pids: Iterable[int]) -> int:
    """Total user+system CPU time of ``pids`` (all their threads), in nanoseconds."""
    reader = _task_cpu_ns if _HAVE_SCHEDSTAT else _stat_cpu_ns
    return sum(reader(pid) for pid in pids)


def machine_cpu_ns() -> tuple[int, int]:
    """(busy, steal) CPU time of the whole machine so far, in nanoseconds: busy is
    user+nice+system time of every process, whoever they belong to."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system = fields[0], fields[1], fields[2]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system) * _TICK_NS, steal * _TICK_NS


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of ``VmRSS`` of ``pids`` in KiB (0 for processes that are gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (nginx's workers, a wrapper's child)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def raise_nofile(want: int = 65536) -> int:
    """Lift the open-file limit (10,000 relayed sessions need ~20,000 descriptors in
    the relay); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            continue
    return soft


def split_cores() -> tuple[set[int] | None, set[int] | None]:
    """(load cores, relay cores): the relay gets the last core, the load side the rest;
    (None, None) on a single core, where pinning would only hurt."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return set(cores[:-1]), {cores[-1]}


def hold_idle_poll() -> int | None:
    """Ask the kernel (PM QoS) for zero wake-up latency until the returned descriptor is
    closed: idle cores then poll instead of halting. In a VM whose idle halt is a
    hypervisor exit this removes tens of microseconds from every cross-core wake-up.
    None when not permitted (needs root)."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        return None
    os.write(fd, (0).to_bytes(4, sys.byteorder))
    return fd


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (the load side must be fast), else
    on the default asyncio loop."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
