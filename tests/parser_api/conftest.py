"""Fixtures for the parser API tests (helpers live in ``parser_testkit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trio_websocket

from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import (
    Client,
    ParserServer,
    ThreadedServers,
    serve,
    start_parser,
)


@pytest.fixture
async def market(nursery: trio.Nursery) -> FakeMarketplace:
    fake = FakeMarketplace()
    fake.base = await serve(nursery, fake)
    return fake


@pytest.fixture
async def parser(nursery: trio.Nursery, market: FakeMarketplace) -> ParserServer:
    return await start_parser(nursery, market)


@pytest.fixture
async def client(parser: ParserServer) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(parser.ws_url()) as ws:
        connection = Client(ws)
        greeting = await connection.recv()
        assert greeting["action"] == "connected"
        yield connection


@pytest.fixture
def threaded() -> Iterator[ThreadedServers]:
    servers = ThreadedServers().start()
    try:
        yield servers
    finally:
        servers.stop()
