"""Every async test here runs under a hang guard: a hung test fails instead of
stalling the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.conditions import guard_async_tests

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    guard_async_tests([item for item in items if HERE in Path(item.path).parents])
