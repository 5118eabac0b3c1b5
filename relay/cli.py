"""The ``relay`` command: ``relay serve`` runs the gateway, ``relay agent`` an egress node."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import attrs
import trio

from relay.agents.node import Node, NodeAddress, serve_node
from relay.agents.proxy import ProxyURL
from relay.config import (
    Config,
    ConfigError,
    KeyConfig,
    NodeConfig,
    NodeSettings,
    load_config,
    load_node_config,
    parse_bind,
)
from relay.converter import InputError, structure
from relay.server import BoundAddress, serve

__all__ = ["TOKEN_ENV", "build_config", "build_node_config", "main"]

TOKEN_ENV = "RELAY_AGENT_TOKEN"


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
    _agent_parser(commands)
    bench_cmd = commands.add_parser(
        "bench", help="benchmark the relay (see bench/)", add_help=False
    )
    bench_cmd.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _agent_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = commands.add_parser("agent", help="run an egress agent that gateways reach")
    agent.add_argument("--config", metavar="FILE", help="TOML with [server], [targets], [agent]")
    agent.add_argument(
        "--bind", metavar="HOST:PORT", type=_bind, help="listen address (default 127.0.0.1:9090)"
    )
    agent.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"the token gateways present (default: ${TOKEN_ENV}; visible in ps, prefer the env)",
    )
    agent.add_argument("--slug", help="this agent's name (default 'agent')")
    agent.add_argument("--country", metavar="CC", help="ISO country code it reports")
    agent.add_argument("--node-id", help="node_id it reports (default relay-<slug>)")
    agent.add_argument("--proxy", metavar="URL", help="dial through this upstream proxy")
    agent.add_argument("--source-address", metavar="IP", help="bind target connections to IP")
    agent.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate")
    agent.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    agent.add_argument(
        "--allow-private-targets",
        action="store_true",
        help="allow loopback and private target addresses (development, tests)",
    )
    agent.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def build_node_config(args: argparse.Namespace) -> NodeConfig:
    """The configuration ``relay agent`` runs with: the file, then the options."""
    config = load_node_config(args.config) if args.config else NodeConfig()
    if args.bind:
        config = attrs.evolve(config, server=attrs.evolve(config.server, bind=args.bind))
    if args.allow_private_targets:
        config = attrs.evolve(config, targets=attrs.evolve(config.targets, allow_private=True))
    changes = {
        name: value
        for name, value in (
            ("slug", args.slug),
            ("country", args.country),
            ("node_id", args.node_id),
            ("proxy", args.proxy),
            ("source_address", args.source_address),
            ("tls_cert", args.tls_cert),
            ("tls_key", args.tls_key),
        )
        if value is not None
    }
    token = args.token or os.environ.get(TOKEN_ENV)
    if token:
        changes.update(token=token, token_sha256=None)
    try:
        settings = structure(
            {**_settings_dict(config.agent), **changes}, NodeSettings, what="agent options"
        )
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    if settings.token_digest is None:
        raise ConfigError(f"a token is required: --token, ${TOKEN_ENV} or [agent] token")
    return attrs.evolve(config, agent=settings)


def _settings_dict(settings: NodeSettings) -> dict[str, object]:
    return {k: v for k, v in attrs.asdict(settings).items() if v is not None}


def _node_banner(address: NodeAddress, config: NodeConfig) -> str:
    agent = config.agent
    where = f" ({agent.country})" if agent.country else ""
    egress = "direct"
    if agent.proxy is not None:
        egress = f"through {ProxyURL.parse(agent.proxy)}"  # str() hides credentials
    if agent.source_address is not None:
        egress += f" from {agent.source_address}"
    lines = [f"relay agent {agent.slug}{where} listening on {address.url}"]
    if not config.targets.allow_private:
        lines.append("private and loopback targets are refused (--allow-private-targets to allow)")
    lines.append(f"egress: {egress}")
    return "\n".join(lines)


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
    try:
        if args.command == "agent":
            node_config = build_node_config(args)
            bind = node_config.server.bind
            # Built here so a bad certificate or key is a start-up error, not a crash.
            node = Node.from_config(node_config)
            run: Callable[[], Awaitable[None]] = partial(_run_node_with, node_config, node)
        else:
            config, dev_key = build_config(args)
            bind = config.server.bind
            run = partial(_serve, config, dev_key)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"relay: {_startup_error(exc)}", file=sys.stderr)
        return 2
    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 0
    except (OSError, BaseExceptionGroup) as exc:
        error = _os_error(exc)
        if error is None:
            raise
        print(f"relay: cannot listen on {bind}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


async def _run_node_with(config: NodeConfig, node: Node) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_node, config, node=node))
        print(_node_banner(address, config), flush=True)


def _startup_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror}"
    return str(exc)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError a start-up failure carries, through nurseries' groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
