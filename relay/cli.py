"""The ``relay`` command: ``relay serve`` runs the gateway."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import TypeVar

import attrs
import trio

from relay.config import Config, ConfigError, KeyConfig, load_config, parse_bind
from relay.ratelimit import LimitsUnavailable
from relay.server import BoundAddress, serve

__all__ = ["build_config", "main"]

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
        "--allow-private-targets",
        action="store_true",
        help="allow loopback and private target addresses (development, tests)",
    )
    serve_cmd.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    bench_cmd = commands.add_parser(
        "bench", help="benchmark the relay (see bench/)", add_help=False
    )
    bench_cmd.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def build_config(args: argparse.Namespace) -> tuple[Config, str | None]:
    """The configuration ``relay serve`` runs with, and the generated dev key if any."""
    config = load_config(args.config) if args.config else Config()
    if args.bind:
        config = attrs.evolve(config, server=attrs.evolve(config.server, bind=args.bind))
    if args.allow_private_targets:
        config = attrs.evolve(config, targets=attrs.evolve(config.targets, allow_private=True))
    if args.api_key:
        extra = tuple(KeyConfig(key=key, name=f"cli-{n}") for n, key in enumerate(args.api_key, 1))
        config = attrs.evolve(config, keys=config.keys + extra)
    return config.with_dev_key()


def _banner(address: BoundAddress, config: Config, dev_key: str | None) -> str:
    lines = [f"relay listening on {address.ws_url}  (docs: {address.http_url}/ws/docs)"]
    agents = ", ".join(f"{a.slug} ({a.kind})" for a in config.agents)
    lines.append(f"agents: {agents}")
    if config.ratelimit.backend == "redis":
        lines.append(f"limits: shared in Redis ({config.ratelimit.on_redis_error} on Redis errors)")
    if not config.targets.allow_private:
        lines.append("private and loopback targets are refused (--allow-private-targets to allow)")
    if dev_key is not None:
        example = json.dumps({"apiKey": dev_key, "url": "wss://echo.websocket.events"})
        lines += [
            f"development API key (generated for this run): {dev_key}",
            "try it:",
            f"  wscat -c {address.ws_url}",
            f"  then paste: {example}",
        ]
    return "\n".join(lines)


async def _serve(config: Config, dev_key: str | None) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve, config)
        print(_banner(address, config, dev_key), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relay`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        # bench/ is optional at run time (its extra installs rich, matplotlib, …).
        bench_cli = importlib.import_module("bench.cli")
        return int(bench_cli.main(list(args.args)))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "debug":
        # Its retries and dropped connections are reported once, by relay.limits.
        logging.getLogger("coredis").setLevel(logging.WARNING)
    try:
        config, dev_key = build_config(args)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(_serve, config, dev_key)
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
