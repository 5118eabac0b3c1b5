"""Batch assembly: drawing items from several paged upstream feeds.

A :class:`Harvester` owns the feeds of one configured session (Poshmark: one
per site and inventory status; Depop: one) and hands out batches of new items,
taking one item from each eligible feed in turn so that ``com+ca`` merges both
domains and Poshmark "ads" and "sales" fill up together until their quotas are
met. It never does I/O itself: a feed's ``fetch`` callable does, so the logic
is testable with in-memory feeds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Container, Mapping

import attrs

from parser_api.items import Item

__all__ = ["Batch", "Feed", "Harvester", "Page"]


@attrs.frozen
class Page:
    """One upstream page, normalized: its items and the cursor of the next page."""

    items: tuple[Item, ...]
    next_cursor: str | None  # None: this was the last page
    skipped: int = 0  # upstream entries that could not be normalized
    note: str | None = None  # why the feed ends early, for stats.me (e.g. a result cap)


@attrs.frozen
class Batch:
    """What one ``parser.fetch`` hands out."""

    items: tuple[Item, ...]
    exhausted: bool


FetchPage = Callable[[str | None], Awaitable[Page]]


@attrs.define
class Feed:
    """One paged upstream listing stream with its cursor and not-yet-used items."""

    name: str  # e.g. "poshmark.com/available", for stats
    kind: str  # quota bucket: "ads", "sales" or "items"
    fetch: FetchPage
    accept: Callable[[Item], bool] = lambda _item: True
    buffer: deque[Item] = attrs.Factory(deque)
    cursor: str | None = None
    last_page_seen: bool = False
    pages: int = 0
    note: str | None = None

    @property
    def finished(self) -> bool:
        """No buffered items and no further page."""
        return self.last_page_seen and not self.buffer

    async def refill(self) -> int:
        """Fetch the next page into the buffer; returns the number of unusable entries."""
        page = await self.fetch(self.cursor)
        # Only a page that arrived whole moves the cursor, so a failed fetch is retried as is.
        self.pages += 1
        self.buffer.extend(page.items)
        self.cursor = page.next_cursor
        if page.next_cursor is None:
            self.last_page_seen = True
        if page.note is not None:
            self.note = f"{self.name}: {page.note}"
        return page.skipped


@attrs.define
class HarvestCounters:
    """Upstream-side numbers reported by ``stats.me``."""

    pages: int = 0
    skipped: int = 0  # malformed upstream entries
    filtered: int = 0  # entries that did not match the session's filters
    duplicates: int = 0
    notes: list[str] = attrs.Factory(list)  # why feeds ended early (a site's result cap)


class Harvester:
    """Hands out batches of new items from ``feeds``, honouring per-kind quotas.

    ``quotas`` maps a feed kind to the total number of items of that kind the
    session wants (kinds absent from the map are unlimited).
    """

    def __init__(
        self, feeds: list[Feed], quotas: Mapping[str, int], *, max_pages_per_batch: int = 20
    ) -> None:
        self.feeds = feeds
        self.quotas = dict(quotas)
        self.taken: dict[str, int] = dict.fromkeys({feed.kind for feed in feeds}, 0)
        self.counters = HarvestCounters()
        self._max_pages = max_pages_per_batch
        self._turn = 0
        # Items drawn for a batch that then failed; they open the next batch.
        self._carry: deque[Item] = deque()

    @property
    def exhausted(self) -> bool:
        """True when no further item can come from any feed."""
        return not self._carry and self._eligible() is None

    async def next_batch(self, size: int, seen: Container[tuple[str, str]]) -> Batch:
        """Up to ``size`` items whose keys are not in ``seen``.

        If a feed fails (any exception, cancellation included) the items already
        drawn are kept for the next call and the exception propagates.
        """
        out: list[Item] = []
        keys: set[tuple[str, str]] = set()
        pages = 0
        try:
            while self._carry and len(out) < size:
                item = self._carry.popleft()
                out.append(item)
                keys.add(item.key)
            while len(out) < size:
                index = self._eligible()
                if index is None:
                    break
                feed = self.feeds[index]
                if not feed.buffer:
                    if pages >= self._max_pages:
                        break  # bounded work per fetch; the caller may fetch again
                    pages += 1
                    self.counters.pages += 1
                    self.counters.skipped += await feed.refill()
                    if feed.note is not None and feed.note not in self.counters.notes:
                        self.counters.notes.append(feed.note)
                    continue
                item = feed.buffer.popleft()
                if item.key in seen or item.key in keys:
                    self.counters.duplicates += 1
                    continue
                if not feed.accept(item):
                    self.counters.filtered += 1
                    continue
                out.append(item)
                keys.add(item.key)
                self.taken[feed.kind] += 1
                self._turn = (index + 1) % len(self.feeds)
        except BaseException:
            self._carry.extendleft(reversed(out))
            raise
        return Batch(items=tuple(out), exhausted=self.exhausted)

    def _eligible(self) -> int | None:
        """Index of the next feed, in turn, that can still contribute an item."""
        count = len(self.feeds)
        for step in range(count):
            index = (self._turn + step) % count
            feed = self.feeds[index]
            if feed.finished:
                continue
            quota = self.quotas.get(feed.kind)
            if quota is not None and self.taken[feed.kind] >= quota:
                continue
            return index
        return None
