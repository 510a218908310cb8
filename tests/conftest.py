"""Shared fixtures. Fixture plugins of the fakes are listed in pytest_plugins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger import Ledger, ManualClock
from tests.stores import STORES, drop_lent_schemas, migrated_schema

pytest_plugins: list[str] = [
    "tests.fakes.openai_server",
    "tests.fakes.lemonsqueezy_server",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run the long variants too")


def pytest_sessionfinish(session: pytest.Session) -> None:
    asyncio.run(drop_lent_schemas())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture(params=STORES)
async def database(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[str]:
    """The database of a test, on each store in turn: a SQLite file, a PostgreSQL schema
    (migrated already, lent for the test: see tests/stores.py)."""
    if request.param == "sqlite":
        yield str(db_path)
        return
    async with migrated_schema() as dsn:
        yield dsn


@pytest.fixture
async def ledger(database: str, clock: ManualClock) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(database, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()
