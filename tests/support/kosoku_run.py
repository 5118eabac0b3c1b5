"""Run kosoku's Autobahn cases against a URL; print {case_id: [passed, behavior, close]} as JSON.

Run: python -m tests.support.kosoku_run URL [--exclude GLOB ...] [--parallel N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from kosoku import FailureError, run_fuzzingclient


async def _main(url: str, exclude: list[str], parallel: int) -> None:
    try:
        results = await run_fuzzingclient(url, exclude_cases=exclude, concurrency=parallel)
    except FailureError as failure:
        results = failure.results
    print(
        json.dumps(
            {
                r.case_id: [r.passed, r.behavior.value, r.behavior_close.value, r.result_close]
                for r in results
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(_main(args.url, args.exclude, args.parallel))
    sys.stdout.flush()
    # kosoku 0.1.0's native runtime sometimes aborts (SIGABRT) during interpreter
    # finalization, after every result was printed; skip finalization.
    os._exit(0)
