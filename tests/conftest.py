"""Shared fixtures. Fixture plugins of the fakes are listed in pytest_plugins."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import tests.examples
from ledger import Ledger, ManualClock
from tests.stores import STORES, drop_lent_schemas, migrated_schema

pytest_plugins: list[str] = [
    "tests.fakes.openai_server",
    "tests.fakes.lemonsqueezy_server",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run the long variants too")


WORKERS = 2  # the machine's two cores


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns -n into its workers
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The whole suite (no path given: the README's command, .ci/run) runs on two workers
    when pytest-xdist is installed (the test extra has it): its processes and waits
    overlap, which no cut within a test gives. A file or a test named on the command line
    runs in this process, as does any run given -n, --pdb or --collect-only, and each
    worker itself. Every test is safe in parallel: ports are chosen by the system, files
    live under tmp_path, PostgreSQL schemas have random names, settings are per process."""
    if not config.pluginmanager.hasplugin("xdist") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return
    option = config.option
    if option.numprocesses is None and not option.usepdb and not option.collectonly:
        option.numprocesses = WORKERS


def pytest_configure(config: pytest.Config) -> None:
    tests.examples.LONG = bool(config.getoption("--slow"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    asyncio.run(drop_lent_schemas())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The stress suites first (each file keeps its order): on two workers, the longest
    # tests start while the short ones fill the other worker, not last with one idle.
    items.sort(key=lambda item: not item.nodeid.startswith("tests/stress/"))
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
