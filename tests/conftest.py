"""Shared fixtures. Fixture plugins of the fakes are listed in pytest_plugins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.front.app import AgentBot
from bot.front.streaming import Pace
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


class Warp:
    """Real time plus every wait slept on it: a sleep returns at once and moves the clock
    past its end. The throttles of streamed answers (an edit per interval, so many per
    channel per window) keep their rules on this clock, and no test waits them out."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def clock(self) -> float:
        return time.monotonic() + self.ahead

    async def sleep(self, seconds: float) -> None:
        self.ahead += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def warp(monkeypatch: pytest.MonkeyPatch) -> Warp:
    """Bots made in this process (the stand-in's, the console's) run on a fresh Warp."""
    warped = Warp()
    monkeypatch.setattr(AgentBot, "pace", Pace(warped.clock, warped.sleep))
    return warped


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
