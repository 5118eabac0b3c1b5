"""The ``relay agent`` command: an egress node that gateways reach."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Callable
from functools import partial

import attrs
import trio

from relay.agents.proxy import ProxyURL
from relay.config import ConfigError, NodeConfig, NodeSettings, load_node_config
from relay.converter import InputError, structure
from relay.node.node import Node, NodeAddress
from relay.node.server import serve_node
from relay.node.tokens import reload_node_tokens

__all__ = ["TOKEN_ENV", "add_agent_parser", "build_node_config", "run_node"]

TOKEN_ENV = "RELAY_AGENT_TOKEN"

log = logging.getLogger("relay.node")


def add_agent_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    bind: Callable[[str], str],
) -> None:
    """Add the ``agent`` subcommand and its options."""
    agent = commands.add_parser("agent", help="run an egress agent that gateways reach")
    agent.add_argument("--config", metavar="FILE", help="TOML with [server], [targets], [agent]")
    agent.add_argument(
        "--bind", metavar="HOST:PORT", type=bind, help="listen address (default 127.0.0.1:9090)"
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
    agent.add_argument(
        "--impersonate",
        metavar="PROFILE",
        help="dial targets as this browser ('chrome', a pinned profile, or 'none') when a "
        "link names none",
    )
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
            ("impersonate", args.impersonate),
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


def node_banner(address: NodeAddress, config: NodeConfig) -> str:
    agent = config.agent
    where = f" ({agent.country})" if agent.country else ""
    egress = "direct"
    if agent.proxy is not None:
        egress = f"through {ProxyURL.parse(agent.proxy)}"  # str() hides credentials
    if agent.source_address is not None:
        egress += f" from {agent.source_address}"
    if agent.impersonate != "none":
        egress += f", as {agent.impersonate}"
    lines = [f"relay agent {agent.slug}{where} listening on {address.url}"]
    if not config.targets.allow_private:
        lines.append("private and loopback targets are refused (--allow-private-targets to allow)")
    lines.append(f"egress: {egress}")
    return "\n".join(lines)


async def run_node(
    config: NodeConfig, node: Node, reread: Callable[[], NodeConfig] | None = None
) -> None:
    """Serve the agent until cancelled; prints its banner once it listens.

    With ``reread`` (the file and options it was started with), SIGHUP
    re-reads them and applies a new token, the old one accepted for
    ``[agent] token_overlap`` seconds more (relay/node/tokens.py).
    """
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(partial(serve_node, config, node=node))
            print(node_banner(address, config), flush=True)
            if reread is None:
                return
            running = config
            async for _signum in signals:
                try:
                    new = reread()
                except ConfigError as exc:
                    # The message names the field at fault; a traceback would add nothing.
                    log.error("configuration not reloaded, nothing changed: %s", exc)  # noqa: TRY400
                    continue
                reload_node_tokens(node.tokens, running, new)
                running = new
