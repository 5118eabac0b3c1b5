"""The ``direct`` agent: this gateway process dials the target itself."""

from __future__ import annotations

import attrs

from relay.browser.profiles import session_profile
from relay.dial import DialSettings, TargetConnection, open_target
from relay.wire.connect import ConnectRequest

__all__ = ["DirectAgent"]


@attrs.define
class DirectAgent:
    """Dials from this process, optionally bound to ``source_address``."""

    slug: str
    country: str | None
    node_id: str
    settings: DialSettings
    source_address: str | None = None
    healthy: bool = True
    kind: str = "direct"
    impersonate: str = "none"  # the browser profile its dials use (relay/browser)
    allow_impersonate: bool = False  # whether a session may choose its own

    async def open(self, request: ConnectRequest) -> TargetConnection:
        """Open the target WebSocket from here."""
        browser = session_profile(
            self.slug, self.impersonate, self.allow_impersonate, request.impersonate
        )
        return await open_target(
            request, self.settings, source_address=self.source_address, browser=browser
        )
