"""The tokens a ``relay agent`` accepts, and rotating them without refusing a gateway.

A fleet cannot switch tokens in one instant: the agent learns the new token
(its file, then SIGHUP), and only then can each gateway be given it (its own
file and reload).  For ``[agent] token_overlap`` seconds after the agent's
reload the old token is still accepted, so links and health checks from
gateways not yet moved keep working; afterwards only the new one is.
Every accepted digest is compared in constant time, match or not.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

import attrs

from relay.config import NodeConfig

__all__ = ["AcceptedTokens", "reload_node_tokens"]

log = logging.getLogger("relay.node")


@attrs.define
class AcceptedTokens:
    """The current token's digest and retiring ones, each until its deadline."""

    current: bytes = attrs.field(repr=False)
    retiring: list[tuple[bytes, float]] = attrs.field(factory=list, repr=False)
    clock: Callable[[], float] = time.monotonic

    def accepts(self, digest: bytes) -> bool:
        """Whether ``digest`` is the current token's or a retiring one still in its overlap."""
        now = self.clock()
        self.retiring = [(old, until) for old, until in self.retiring if until > now]
        found = hmac.compare_digest(digest, self.current)
        for old, _until in self.retiring:
            found |= hmac.compare_digest(digest, old)
        return found

    def rotate(self, digest: bytes, overlap: float) -> bool:
        """Make ``digest`` current; the previous one is accepted ``overlap`` seconds more.

        False (nothing changes) when ``digest`` is already current.
        """
        if hmac.compare_digest(digest, self.current):
            return False
        if overlap > 0:
            self.retiring.append((self.current, self.clock() + overlap))
        self.current = digest
        return True


def _without_tokens(config: NodeConfig) -> NodeConfig:
    agent = attrs.evolve(config.agent, token=None, token_sha256=None, token_overlap=0.0)
    return attrs.evolve(config, agent=agent)


def reload_node_tokens(tokens: AcceptedTokens, running: NodeConfig, new: NodeConfig) -> bool:
    """Apply ``new``'s token to ``tokens``; other changes are logged as needing a restart.

    Returns whether the token changed.
    """
    digest = new.agent.token_digest
    assert digest is not None  # build_node_config refuses a configuration without one
    rotated = tokens.rotate(digest, new.agent.token_overlap)
    if rotated:
        log.info(
            "new token in force; the previous one is accepted for %g s more",
            new.agent.token_overlap,
        )
    else:
        log.info("configuration re-read; the token is unchanged")
    if _without_tokens(running) != _without_tokens(new):
        log.warning("settings other than the token changed: they need a restart")
    return rotated
