"""Batch assembly from in-memory feeds: turn-taking, quotas, de-duplication, failures."""

from __future__ import annotations

import pytest

from parser_api.harvest import Feed, Harvester, Page
from parser_api.items import Item
from parser_api.sources.http import UpstreamError


def item(item_id: str, *, site: str = "com", status: str = "available") -> Item:
    return Item(
        id=item_id, marketplace="poshmark", site=site, status=status, title=item_id, price=1.0,
        currency="USD", original_price=None, brand=None, size=None, condition=None, url="u",
        images=(), seller=None, country=None, created_at=None,
    )  # fmt: skip


class PagedList:
    """A fake upstream: ``pages`` of ids; ``fail_on`` page numbers raise once."""

    def __init__(self, pages: list[list[Item]], *, fail_on: set[int] | None = None) -> None:
        self.pages = pages
        self.fail_on = set(fail_on or ())
        self.calls: list[str | None] = []

    async def __call__(self, cursor: str | None) -> Page:
        self.calls.append(cursor)
        index = int(cursor or 0)
        if index in self.fail_on:
            self.fail_on.discard(index)
            raise UpstreamError("upstream_error", "boom", status=500)
        next_cursor = str(index + 1) if index + 1 < len(self.pages) else None
        return Page(items=tuple(self.pages[index]), next_cursor=next_cursor)


def ids(batch_items: tuple[Item, ...]) -> list[str]:
    return [i.id for i in batch_items]


async def test_feeds_take_turns_and_quotas_are_respected() -> None:
    com = PagedList([[item(f"c{i}") for i in range(3)], [item(f"c{i}") for i in range(3, 6)]])
    ca = PagedList([[item(f"a{i}", site="ca") for i in range(6)]])
    sold = PagedList([[item(f"s{i}", status="sold") for i in range(6)]])
    harvester = Harvester(
        [Feed("com", "ads", com), Feed("ca", "ads", ca), Feed("sold", "sales", sold)],
        {"ads": 5, "sales": 2},
    )
    first = await harvester.next_batch(4, set())
    assert ids(first.items) == ["c0", "a0", "s0", "c1"]
    second = await harvester.next_batch(4, set())
    assert ids(second.items) == ["a1", "s1", "c2"]  # both quotas met: 5 ads, 2 sales
    assert second.exhausted
    third = await harvester.next_batch(4, set())
    assert third.items == ()
    assert third.exhausted
    assert com.calls == [None]  # the second page was never needed


async def test_duplicates_and_seen_items_are_skipped() -> None:
    com = PagedList([[item("x"), item("y"), item("z")]])
    ca = PagedList([[item("x", site="ca"), item("w", site="ca")]])
    harvester = Harvester([Feed("com", "ads", com), Feed("ca", "ads", ca)], {"ads": 10})
    batch = await harvester.next_batch(10, {("poshmark", "z")})
    assert ids(batch.items) == ["x", "w", "y"]
    assert harvester.counters.duplicates == 2  # x seen on ca, z already sent
    assert batch.exhausted


async def test_rejected_items_are_counted_and_skipped() -> None:
    feed = Feed(
        "f", "items", PagedList([[item("a"), item("b"), item("c")]]), accept=lambda i: i.id != "b"
    )
    harvester = Harvester([feed], {})
    batch = await harvester.next_batch(5, set())
    assert ids(batch.items) == ["a", "c"]
    assert harvester.counters.filtered == 1


async def test_a_failing_page_keeps_drawn_items_and_the_cursor() -> None:
    upstream = PagedList([[item("a"), item("b")], [item("c"), item("d")]], fail_on={1})
    harvester = Harvester([Feed("f", "items", upstream)], {})
    with pytest.raises(UpstreamError):
        await harvester.next_batch(3, set())
    assert not harvester.exhausted
    batch = await harvester.next_batch(3, set())
    assert ids(batch.items) == ["a", "b", "c"]  # nothing lost, nothing repeated
    assert upstream.calls == [None, "1", "1"]  # the failed page was asked for again
    rest = await harvester.next_batch(3, set())
    assert ids(rest.items) == ["d"]
    assert rest.exhausted


async def test_pages_per_batch_are_bounded() -> None:
    # Every entry is filtered out: the harvester must stop, not page forever.
    upstream = PagedList([[item(f"i{n}")] for n in range(50)])
    harvester = Harvester(
        [Feed("f", "items", upstream, accept=lambda _i: False)], {}, max_pages_per_batch=5
    )
    batch = await harvester.next_batch(3, set())
    assert batch.items == ()
    assert not batch.exhausted
    assert len(upstream.calls) == 5
