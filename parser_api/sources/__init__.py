"""Marketplace sources: turning a validated configure payload into a :class:`Harvester`."""

from __future__ import annotations

from parser_api.config import ParserConfig
from parser_api.harvest import Harvester
from parser_api.protocol import Configure, DepopConfigure, PoshmarkConfigure
from parser_api.sources.depop import BrandIds, DepopFilters, DepopIdentity, depop_feed
from parser_api.sources.http import PoliteClient, UpstreamError
from parser_api.sources.poshmark import poshmark_feed

__all__ = ["SourceFactory", "UpstreamError"]


class SourceFactory:
    """Builds each session's feeds against the configured base URLs and one shared client."""

    def __init__(self, config: ParserConfig, client: PoliteClient) -> None:
        self.config = config
        self.client = client
        # Like one browser: one Depop device id for the process, brand ids learned once.
        self.depop_device_id = DepopIdentity().device_id
        self.depop_brands = BrandIds()

    def harvester(self, request: Configure, *, session_id: str | None = None) -> Harvester:
        """A fresh harvester (cursors at the first page) for ``request``.

        ``session_id``: the connection's client session id (Depop's
        ``depop-session-id``); a fresh one when None.
        """
        if isinstance(request, PoshmarkConfigure):
            return self._poshmark(request)
        identity = DepopIdentity(device_id=self.depop_device_id)
        if session_id is not None:
            identity = DepopIdentity(device_id=self.depop_device_id, session_id=session_id)
        return self._depop(request, identity)

    def _poshmark(self, request: PoshmarkConfigure) -> Harvester:
        settings = self.config.poshmark
        bases = {"com": settings.base_url_com, "ca": settings.base_url_ca}
        sites = request.parsing_mode.split("+")
        kinds = [
            kind
            for kind, count in (("ads", request.ads_count), ("sales", request.sales_count))
            if count
        ]
        # Feed order interleaves the domains first, so com+ca batches alternate com/ca items.
        feeds = [
            poshmark_feed(
                self.client,
                base_url=bases[site],
                site=site,
                kind=kind,
                page_size=settings.page_size,
                query=request.query,
            )
            for kind in kinds
            for site in sites
        ]
        return Harvester(feeds, {"ads": request.ads_count, "sales": request.sales_count})

    def _depop(self, request: DepopConfigure, identity: DepopIdentity) -> Harvester:
        filters = DepopFilters(
            country=request.country_filter.lower() if request.country_filter else None,
            min_price=request.min_price,
            max_price=request.max_price,
            brand=request.brand_filter,
            query=request.query,
        )
        feed = depop_feed(
            self.client,
            base_url=self.config.depop.base_url,
            filters=filters,
            page_size=self.config.depop.page_size,
            identity=identity,
            brands=self.depop_brands,
            spacing=self.config.depop.request_spacing,
        )
        return Harvester([feed], {})
