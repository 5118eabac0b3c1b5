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

from relay.config import LOG_LEVELS, Config, ConfigError, parse_bind
from relay.configsource import ConfigSource, prepare
from relay.limits import open_limits
from relay.logs import configure_logging
from relay.malloc import tune_malloc
from relay.node.cli import TOKEN_ENV, add_agent_parser, build_node_config, run_node
from relay.node.node import Node
from relay.opscli import add_ops_parsers, pid_file, run_keys_new, run_reload
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
        "--log-level", choices=LOG_LEVELS, help="log threshold (default: [server] log_level, info)"
    )
    serve_cmd.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="log line format"
    )
    serve_cmd.add_argument(
        "--pid-file", metavar="FILE", help="write the PID here (for relay reload); removed at exit"
    )
    add_agent_parser(commands, _bind)
    add_ops_parsers(commands)
    # Parsed by bench.cli itself; listed here for `relay --help`.
    commands.add_parser("bench", help="benchmark and load-test the relay (relay bench --help)")
    return parser


def config_source(args: argparse.Namespace) -> ConfigSource:
    """The file and the options ``relay serve`` (or ``relay config check``) was given."""
    return ConfigSource(
        path=args.config,
        bind=getattr(args, "bind", None),
        certfile=getattr(args, "certfile", None),
        keyfile=getattr(args, "keyfile", None),
        allow_private_targets=getattr(args, "allow_private_targets", False),
        api_keys=tuple(getattr(args, "api_key", ())),
    )


def load_for_serve(args: argparse.Namespace) -> tuple[ConfigSource, Config, Generated]:
    """Read, validate and build the configuration exactly as ``relay serve`` does.

    Raises :class:`ConfigError` with the message ``relay serve`` prints.
    """
    first = config_source(args)
    source, config = first.first_read()
    prepare(config)  # CA files, proxies, the certificate: refused now, not at the first dial
    generated = Generated(
        source.dev_key if first.dev_key != source.dev_key else None,
        source.parser_token if first.parser_token != source.parser_token else None,
    )
    return source, config, generated


def build_config(args: argparse.Namespace) -> tuple[Config, Generated]:
    """The configuration ``relay serve`` runs with, and the secrets generated for it."""
    _source, config, generated = load_for_serve(args)
    return config, generated


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


async def _serve(
    config: Config, generated: Generated, source: ConfigSource, args: argparse.Namespace
) -> None:
    await run_until_signalled(
        config,
        source=source,
        cli_log_level=args.log_level,
        on_ready=lambda address: print(_banner(address, config, generated), flush=True),
    )


async def _serve_workers(
    config: Config, generated: Generated, source: ConfigSource, args: argparse.Namespace
) -> None:
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
                source=source,
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
    if args.command == "config":
        return _config_check(args.file)
    if args.command == "keys":
        return run_keys_new(args)
    if args.command == "reload":
        return run_reload(args, _check_file)
    configure_logging(args.log_level or "info", getattr(args, "log_format", "text"))
    if args.log_level != "debug":
        # Its retries and dropped connections are reported once, by relay.limits.
        logging.getLogger("coredis").setLevel(logging.WARNING)
    tune_malloc()  # before any buffer is allocated: see relay/malloc.py
    if args.command == "agent":
        return _agent_main(args)
    try:
        source, config, generated = load_for_serve(args)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    if args.log_level is None and config.server.log_level is not None:
        logging.getLogger().setLevel(config.server.log_level.upper())
    if args.workers < 1:
        print("relay: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        with pid_file(args.pid_file):
            if args.workers > 1:
                trio.run(_serve_workers, config, generated, source, args)
            else:
                trio.run(_serve, config, generated, source, args)
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


def _check_file(path: str) -> None:
    """Validate ``path`` as ``relay serve --config path`` would; raises :class:`ConfigError`."""
    load_for_serve(_parser().parse_args(["serve", "--config", path]))


def _config_check(path: str) -> int:
    """``relay config check FILE``: exit 0 if ``relay serve`` would start with it, else 2."""
    try:
        _source, config, generated = load_for_serve(
            _parser().parse_args(["serve", "--config", path])
        )
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    agents = ", ".join(agent.slug for agent in config.agents)
    keys = "no keys (serve would generate a development key)"
    if generated.api_key is None:
        keys = f"{len(config.keys)} key(s)"
    print(f"relay: {path} is valid: {keys}, agents {agents}")
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
        trio.run(run_node, node_config, node, partial(build_node_config, args))
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
