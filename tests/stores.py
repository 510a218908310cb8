"""The two stores the suites run on: a fresh SQLite file, or a fresh PostgreSQL schema.

PostgreSQL is at BOT_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
Without a reachable server its cases skip, unless REQUIRE_POSTGRES=1 (set by .ci/run),
which makes them fail: CI always runs them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

POSTGRES = os.environ.get("BOT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
STORES = ["sqlite", "postgresql"]


def _unreachable(why: str) -> None:
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required (REQUIRE_POSTGRES=1) but unreachable: {why}")
    pytest.skip(f"no PostgreSQL server reachable: {why}")


def with_schema(schema: str) -> str:
    return f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}search_path={schema}"


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A DSN whose search_path is a new, empty schema, dropped afterwards."""
    try:
        import asyncpg
    except ImportError as error:
        _unreachable(str(error))
    try:
        admin = await asyncpg.connect(POSTGRES, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        _unreachable(str(error))
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield with_schema(schema)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
