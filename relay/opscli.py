"""The operator's commands beside ``relay serve``: ``relay keys new``, ``relay reload``,
``relay config check`` (its check itself lives in relay/cli.py, next to ``serve``'s
loading, so the two cannot drift apart), and the PID file ``relay reload`` uses.

``relay reload`` signals the gateway whose PID file it is given: ``SIGHUP``
re-reads the configuration, ``SIGUSR2`` does the same and also ends the open
sessions of keys the new file no longer has (docs/decisions/0013-live-reload.md).
Only the gateway's own user (or root) may signal it, so the mechanism is
local and needs no credential of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from relay.config import ConfigError
from relay.keytool import new_key

__all__ = [
    "END_REVOKED_SIGNAL",
    "RELOAD_SIGNAL",
    "add_ops_parsers",
    "pid_file",
    "run_keys_new",
    "run_reload",
]

RELOAD_SIGNAL = signal.SIGHUP
END_REVOKED_SIGNAL = signal.SIGUSR2  # reload, and end sessions of revoked keys


def add_ops_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config check``, ``keys new`` and ``reload``."""
    config_cmd = commands.add_parser("config", help="configuration tools (relay config check)")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a file exactly as relay serve would")
    check.add_argument("file", metavar="FILE", help="TOML configuration file")

    keys_cmd = commands.add_parser("keys", help="API key tools (relay keys new)")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = keys_sub.add_parser(
        "new", help="print a fresh API key once, and its [[keys]] block (hash only)"
    )
    new.add_argument("--name", help="label in logs and metrics")
    new.add_argument("--rate", type=float, help="tokens added per second (default 1.0)")
    new.add_argument("--burst", type=int, help="bucket capacity (default 10)")
    new.add_argument("--max-sessions", type=int, help="sessions the key may hold at once")

    reload_cmd = commands.add_parser(
        "reload", help="make a running gateway re-read its configuration"
    )
    reload_cmd.add_argument(
        "--pid-file", metavar="FILE", required=True, help="the file relay serve --pid-file wrote"
    )
    reload_cmd.add_argument(
        "--config",
        metavar="FILE",
        help="check this file first and signal only if it validates",
    )
    reload_cmd.add_argument(
        "--end-revoked",
        action="store_true",
        help="also end open sessions of keys the file no longer has (1008 API key revoked)",
    )


def run_keys_new(args: argparse.Namespace) -> int:
    """``relay keys new``: the key on stderr (shown once), the block on stdout.

    So ``relay keys new --name acme >> relay.toml`` appends only the block.
    """
    try:
        made = new_key(
            name=args.name, rate=args.rate, burst=args.burst, max_sessions=args.max_sessions
        )
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    print(f"API key (shown once, give it to its owner now): {made.key}", file=sys.stderr)
    sys.stdout.write(made.toml())
    sys.stdout.flush()
    return 0


def _read_pid(path: str) -> int:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if not text.isdigit():
        raise ConfigError(f"{path} does not hold a process id")
    return int(text)


def run_reload(args: argparse.Namespace, check: Callable[[str], None]) -> int:
    """``relay reload``: optionally check the file, then signal the gateway."""
    if args.config:
        try:
            check(args.config)
        except ConfigError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            print("relay: nothing was reloaded", file=sys.stderr)
            return 2
    try:
        pid = _read_pid(args.pid_file)
        signum = END_REVOKED_SIGNAL if args.end_revoked else RELOAD_SIGNAL
        os.kill(pid, signum)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except ProcessLookupError:
        print(f"relay: no process {pid} (from {args.pid_file}) is running", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"relay: not allowed to signal process {pid}", file=sys.stderr)
        return 1
    print(f"relay: sent {signum.name} to {pid}; the gateway logs the result")
    return 0


@contextlib.contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Write this process's PID to ``path`` (atomically) while the block runs."""
    if path is None:
        yield
        return
    target = Path(path)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".relay-pid-")
    with os.fdopen(fd, "w") as file:
        file.write(f"{os.getpid()}\n")
    os.replace(temporary, target)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
