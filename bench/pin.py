"""``python -m bench.pin CORES -- CMD ...``: pin to CORES, lift the fd limit, exec CMD.

Pinning before exec means every thread and child the command ever makes is born
on the right core (nginx forks its worker before a parent could pin it).
CORES is a comma list of core numbers, or ``-`` for no pinning.
"""

from __future__ import annotations

import os
import sys

from bench.osutil import raise_nofile


def main(argv: list[str]) -> None:
    """Parse ``CORES -- CMD...`` and replace this process with CMD."""
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m bench.pin CORES -- CMD [ARGS...]")
    if argv[0] != "-":
        os.sched_setaffinity(0, {int(c) for c in argv[0].split(",")})
    raise_nofile()
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
