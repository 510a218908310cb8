"""The two stores the suites run on: a fresh SQLite file, or a fresh PostgreSQL schema.

PostgreSQL is at BOT_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
Without a reachable server its cases skip, unless REQUIRE_POSTGRES=1 (set by .ci/run),
which makes them fail: CI always runs them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from ledger.storage import open_store

POSTGRES = os.environ.get("BOT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
STORES = ["sqlite", "postgresql"]


def _unreachable(why: str) -> None:
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required (REQUIRE_POSTGRES=1) but unreachable: {why}")
    pytest.skip(f"no PostgreSQL server reachable: {why}")


def with_schema(schema: str) -> str:
    return f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}search_path={schema}"


async def _admin() -> Any:
    try:
        import asyncpg
    except ImportError as error:
        _unreachable(str(error))
    try:
        return await asyncpg.connect(POSTGRES, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        _unreachable(str(error))


async def create_schema() -> str:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = await _admin()
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
    finally:
        await admin.close()
    return schema


async def drop_schema(schema: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A DSN whose search_path is a new, empty schema, dropped afterwards."""
    schema = await create_schema()
    try:
        yield with_schema(schema)
    finally:
        await drop_schema(schema)


async def query(
    database: str | Path, sql: str, parameters: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """The rows of a read, through the store of either engine, as plain tuples."""
    store = await open_store(database)
    try:
        return [tuple(r) for r in await store.reader.execute_fetchall(sql, parameters)]
    finally:
        await store.close()


async def execute(database: str | Path, sql: str, parameters: Sequence[Any] = ()) -> None:
    """One statement in a write transaction of the store: what a test does behind the
    ledger's back (tampering, a process made to look as if it ran elsewhere)."""
    store = await open_store(database)
    try:
        await store.write(lambda conn: conn.execute(sql, parameters))
    finally:
        await store.close()


def query_now(
    database: str | Path, sql: str, parameters: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """`query`, from a test that is not async."""
    return asyncio.run(query(database, sql, parameters))


def execute_now(database: str | Path, sql: str, parameters: Sequence[Any] = ()) -> None:
    """`execute`, from a test that is not async."""
    asyncio.run(execute(database, sql, parameters))


@contextmanager
def sync_database(store: str, path: Path) -> Iterator[str]:
    """For a test that is not async: `path` for "sqlite", or a fresh PostgreSQL schema
    for "postgresql" (dropped afterwards)."""
    if store == "sqlite":
        yield str(path)
        return
    schema = asyncio.run(create_schema())
    try:
        yield with_schema(schema)
    finally:
        asyncio.run(drop_schema(schema))
