"""Keeping the relay's read buffers out of the page-fault path (glibc only).

Every large read is a new ``bytes`` object of up to 256 KiB.  With glibc's
defaults such buffers are mapped fresh (over the 128 KiB mmap threshold) or
returned to the kernel when the heap top is trimmed, so each read page-faults
its buffer in again: measured at ~180 minor faults per relayed 1 MiB message,
most of the relay's system time on that path.  Raising both thresholds keeps
freed buffers in the heap for reuse; ``relay serve`` calls :func:`tune_malloc`
at start-up.  A library embedding the relay leaves its process alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

log = logging.getLogger("relay.malloc")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Above the largest buffer the relay reads or builds (256 KiB reads, 1 MiB at most
# for a re-masked region), so those come from the heap and are reused.
MMAP_THRESHOLD = 1024 * 1024
# Free heap kept before returning memory to the kernel: a few MiB of churn.
TRIM_THRESHOLD = 8 * 1024 * 1024


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds; False where there is no glibc ``mallopt``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("malloc thresholds %s", "set" if done else "not set")
    return done
