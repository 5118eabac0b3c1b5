"""A WebSocket relay gateway on Trio.

Embed it with :func:`serve` inside a Trio nursery, open relayed sessions with
:mod:`relay.client`, or run it with the ``relay`` command.
"""

from relay.config import (
    AgentConfig,
    Config,
    KeyConfig,
    RateLimitConfig,
    ServerConfig,
    TargetsConfig,
    load_config,
)
from relay.server import BoundAddress, serve

__all__ = [
    "AgentConfig",
    "BoundAddress",
    "Config",
    "KeyConfig",
    "RateLimitConfig",
    "ServerConfig",
    "TargetsConfig",
    "load_config",
    "serve",
]
