"""The ``relay`` command: ``relay serve`` runs the gateway."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from functools import partial
from typing import TypeVar

import attrs
import trio

from relay.config import Config, ConfigError, KeyConfig, load_config, parse_bind
from relay.limits import open_limits
from relay.logs import configure_logging
from relay.malloc import tune_malloc
from relay.node.cli import TOKEN_ENV, add_agent_parser, build_node_config, run_node
from relay.node.node import Node
from relay.ratelimit import LimitsUnavailable
from relay.server import BoundAddress, run_until_signalled
from relay.workers import run_workers

log = logging.getLogger("relay.cli")

__all__ = ["TOKEN_ENV", "build_config", "build_node_config", "main"]

_E = TypeVar("_E", bound=BaseException)


def _bind(value: str) -> str:
    try:
        parse_bind(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="WebSocket relay gateway on Trio")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve_cmd.add_argument(
        "--bind", metavar="HOST:PORT", type=_bind, help="listen address (default 127.0.0.1:8080)"
    )
    serve_cmd.add_argument(
        "--api-key",
        metavar="KEY",
        action="append",
        default=[],
        help="accept this API key (repeatable; added to the config's keys)",
    )
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N gateway processes sharing the port (SO_REUSEPORT); default 1",
    )
    serve_cmd.add_argument("--certfile", metavar="PEM", help="serve wss:// and https:// with this")
    serve_cmd.add_argument("--keyfile", metavar="PEM", help="private key for --certfile")
    serve_cmd.add_argument(
        "--allow-private-targets",
        action="store_true",
        help="allow loopback and private target addresses (development, tests)",
    )
    serve_cmd.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    serve_cmd.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="log line format"
    )
    add_agent_parser(commands, _bind)
    # Parsed by bench.cli itself; listed here for `relay --help`.
    commands.add_parser("bench", help="benchmark and load-test the relay (relay bench --help)")
    return parser


def build_config(args: argparse.Namespace) -> tuple[Config, Generated]:
    """The configuration ``relay serve`` runs with, and the secrets generated for it."""
    config = load_config(args.config) if args.config else Config()
    if args.bind:
        config = attrs.evolve(config, server=attrs.evolve(config.server, bind=args.bind))
    if args.certfile:
        tls = {"certfile": args.certfile, "keyfile": args.keyfile}
        config = attrs.evolve(config, server=attrs.evolve(config.server, **tls))
    if args.allow_private_targets:
        config = attrs.evolve(config, targets=attrs.evolve(config.targets, allow_private=True))
    if args.api_key:
        extra = tuple(KeyConfig(key=key, name=f"cli-{n}") for n, key in enumerate(args.api_key, 1))
        config = attrs.evolve(config, keys=config.keys + extra)
    config, api_key = config.with_dev_key()
    parser, parser_token = config.parser.ensure_token()
    return attrs.evolve(config, parser=parser), Generated(api_key, parser_token)


@attrs.frozen
class Generated:
    """Secrets made up for this run, printed once in the banner (never logged)."""

    api_key: str | None = attrs.field(default=None, repr=False)
    parser_token: str | None = attrs.field(default=None, repr=False)


def _banner(address: BoundAddress, config: Config, generated: Generated) -> str:
    lines = [f"relay listening on {address.ws_url}  (docs: {address.http_url}/ws/docs)"]
    agents = ", ".join(f"{a.slug} ({a.kind})" for a in config.agents)
    lines.append(f"agents: {agents}")
    if config.ratelimit.backend == "redis":
        lines.append(f"limits: shared in Redis ({config.ratelimit.on_redis_error} on Redis errors)")
    if not config.targets.allow_private:
        lines.append("private and loopback targets are refused (--allow-private-targets to allow)")
    parser_url = address.ws_url + "/parser"
    if generated.parser_token is not None:
        lines.append(
            f"parser API: {parser_url}  admin token (generated for this run): "
            f"{generated.parser_token}"
        )
    else:
        lines.append(f"parser API: {parser_url}")
    if generated.api_key is not None:
        example = json.dumps({"apiKey": generated.api_key, "url": "wss://echo.websocket.events"})
        lines += [
            f"development API key (generated for this run): {generated.api_key}",
            "try it:",
            f"  wscat -c {address.ws_url}",
            f"  then paste: {example}",
        ]
    return "\n".join(lines)


async def _serve(config: Config, generated: Generated) -> None:
    await run_until_signalled(
        config, on_ready=lambda address: print(_banner(address, config, generated), flush=True)
    )


async def _serve_workers(config: Config, generated: Generated, args: argparse.Namespace) -> None:
    # Checked once here: otherwise an unreachable Redis would only make every
    # worker exit at start-up, and the supervisor restart them again and again.
    async with open_limits(config.ratelimit):
        pass
    async with trio.open_nursery() as nursery:
        address, pids = await nursery.start(
            partial(
                run_workers,
                config,
                args.workers,
                log_level=args.log_level,
                log_format=args.log_format,
            )
        )
        banner = _banner(address, config, generated)
        workers = f"workers: {len(pids)} (pids {', '.join(map(str, pids))})"
        print(banner.replace("\nagents: ", f"\n{workers}\nagents: ", 1), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relay`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Handed over before parsing: bench has its own options (argparse's
        # REMAINDER would not take a leading --option).  bench/ needs the
        # `bench` extra (rich, matplotlib, hdrhistogram, …).
        bench_cli = importlib.import_module("bench.cli")
        return int(bench_cli.main(argv[1:]))
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, getattr(args, "log_format", "text"))
    if args.log_level != "debug":
        # Its retries and dropped connections are reported once, by relay.limits.
        logging.getLogger("coredis").setLevel(logging.WARNING)
    tune_malloc()  # before any buffer is allocated: see relay/malloc.py
    if args.command == "agent":
        return _agent_main(args)
    try:
        config, generated = build_config(args)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("relay: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.workers > 1:
            trio.run(_serve_workers, config, generated, args)
        else:
            trio.run(_serve, config, generated)
    except KeyboardInterrupt:
        return 0
    except (OSError, LimitsUnavailable, BaseExceptionGroup) as exc:
        unavailable = _find(exc, LimitsUnavailable)
        if unavailable is not None:
            print(f"relay: {unavailable}", file=sys.stderr)
            return 1
        error = _find(exc, OSError)
        if error is None:
            raise
        print(f"relay: cannot listen on {config.server.bind}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


def _agent_main(args: argparse.Namespace) -> int:
    try:
        node_config = build_node_config(args)
        # Built here so a bad certificate or key is a start-up error, not a crash.
        node = Node.from_config(node_config)
    except (ConfigError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename:
            print(f"relay: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        else:
            print(f"relay: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(run_node, node_config, node)
    except KeyboardInterrupt:
        return 0
    except (OSError, BaseExceptionGroup) as exc:
        error = _find(exc, OSError)
        if error is None:
            raise
        bind = node_config.server.bind
        print(f"relay: cannot listen on {bind}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    """The ``kind`` of error a start-up failure carries, through nurseries' groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
