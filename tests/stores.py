"""The two stores the suites run on: a fresh SQLite file, or a fresh PostgreSQL schema.

PostgreSQL is at BOT_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
Without a reachable server its cases skip, unless REQUIRE_POSTGRES=1 (set by .ci/run),
which makes them fail: CI always runs them.

Migrating a PostgreSQL schema is some ninety DDL statements, half a second a test, and
dropping it costs more of the same. So `migrated_schema` lends a schema that the session
migrated once (every part: ledger, application, billing, with the code the bot opens its
store with) and, when the test is done, empties it with plain DELETEs (triggers off, so
the append-only tables empty too) and restarts its sequences: the next test finds it as a
fresh migration leaves it. A schema whose definition the test changed (a table dropped,
a trigger added) is dropped instead of lent again. `fresh_schema` still gives an empty,
unmigrated schema, for tests that migrate it themselves."""

from __future__ import annotations

import asyncio
import os
import shutil
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


# The definition of a schema's tables, as the catalog rows that hold it: the tables,
# their columns, triggers, constraints and indexes. DDL writes new rows (a new xmin), so a
# table dropped or altered, a trigger disabled, an index added all change it; statistics
# and vacuum update in place and do not. (A table a test adds is not seen, nor emptied:
# no code of ours would read it.) Looked up by the tables' oids, it costs a millisecond.
_DEFINITION = """
SELECT md5(concat_ws('|',
    (SELECT string_agg(oid::text || ':' || xmin::text, ',' ORDER BY oid)
        FROM pg_class WHERE oid = ANY($1::oid[])),
    (SELECT string_agg(attrelid::text || '.' || attnum || ':' || xmin::text, ','
            ORDER BY attrelid, attnum)
        FROM pg_attribute WHERE attrelid = ANY($1::oid[])),
    (SELECT string_agg(oid::text || ':' || xmin::text, ',' ORDER BY oid)
        FROM pg_trigger WHERE tgrelid = ANY($1::oid[])),
    (SELECT string_agg(oid::text || ':' || xmin::text, ',' ORDER BY oid)
        FROM pg_constraint WHERE conrelid = ANY($1::oid[])),
    (SELECT string_agg(indexrelid::text || ':' || xmin::text, ',' ORDER BY indexrelid)
        FROM pg_index WHERE indrelid = ANY($1::oid[]))
))
"""

_free: list[str] = []  # migrated schemas, empty, ready to lend
_tables: dict[str, list[int]] = {}  # schema -> the oids of its tables
_definitions: dict[str, str] = {}  # schema -> its definition as the session migrated it
_emptying: dict[str, str] = {}  # schema -> the statements that empty it again


async def _definition(admin: Any, schema: str) -> str:
    """The tables' definition and the schema versions a migration recorded."""
    versions = await admin.fetch(f"SELECT part, version FROM {schema}.schema_versions")
    tables = await admin.fetchval(_DEFINITION, _tables[schema])
    return f"{tables} {sorted(map(tuple, versions))}"


async def _migrate(schema: str) -> None:
    """Every part's migrations, as `Services.open` applies them, and nothing else (no
    process registered, no row written)."""
    from bot.billing.store import migrate as migrate_billing
    from bot.core.repository import Repository
    from ledger.storage.postgres import PostgresStore

    store = await PostgresStore.open(with_schema(schema), pool_size=1)
    try:
        await Repository(store).migrate()
        await migrate_billing(store)
    finally:
        await store.close()


async def _new_migrated_schema(admin: Any) -> str:
    schema = await create_schema()
    try:
        return await _prepare(admin, schema)
    except BaseException:
        await drop_schema(schema)
        raise


async def _prepare(admin: Any, schema: str) -> str:
    await _migrate(schema)
    tables = await admin.fetch(
        "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
        schema,
    )
    _tables[schema] = [row[1] for row in tables]
    # The schema versions stay: a fresh migration leaves them. The rest must be empty.
    tables = [row for row in tables if row[0] != "schema_versions"]
    sequences = await admin.fetch(
        "SELECT sequencename, start_value FROM pg_sequences WHERE schemaname = $1", schema
    )
    for row in tables:  # a migration that seeded rows would need them kept: none does
        count = await admin.fetchval(f'SELECT count(*) FROM {schema}."{row[0]}"')
        assert count == 0, f"a migration left rows in {row[0]}: lending must keep them"
    statements = [
        "SET LOCAL session_replication_role = replica",  # no trigger: append-only, keys
        "SET LOCAL lock_timeout = '10s'",
        *(f'DELETE FROM {schema}."{row[0]}"' for row in tables),
        *(f"SELECT setval('{schema}.\"{row[0]}\"', {row[1]}, false)" for row in sequences),
    ]
    _emptying[schema] = ";\n".join(statements)
    _definitions[schema] = await _definition(admin, schema)
    return schema


async def _give_back(schema: str) -> None:
    admin = await _admin()
    try:
        if await _definition(admin, schema) == _definitions[schema]:
            async with admin.transaction():
                await admin.execute(_emptying[schema])
            _free.append(schema)
            return
    except Exception:  # a lock still held by a leaked connection, say: not lent again
        pass
    finally:
        await admin.close()
    del _tables[schema], _definitions[schema], _emptying[schema]
    await drop_schema(schema)


@asynccontextmanager
async def migrated_schema() -> AsyncIterator[str]:
    """A DSN whose search_path is a schema at the latest migration, with no row."""
    if _free:
        schema = _free.pop()
    else:
        admin = await _admin()
        try:
            schema = await _new_migrated_schema(admin)
        finally:
            await admin.close()
    try:
        yield with_schema(schema)
    finally:
        await _give_back(schema)


async def drop_lent_schemas() -> None:
    """At the end of the session."""
    while _free:
        schema = _free.pop()
        del _tables[schema], _definitions[schema], _emptying[schema]
        await drop_schema(schema)


_sqlite_template: Path | None = None  # this process's migrated SQLite file, once made


async def copy_migrated_sqlite(path: Path, folder: Path) -> None:
    """Put at `path` a copy of an SQLite file at the latest migration, made once (in
    `folder`) the way `_migrate` makes a PostgreSQL schema: every part, no row. Copying
    it is a few milliseconds; migrating a new file, about a hundred."""
    global _sqlite_template
    from bot.billing.store import migrate as migrate_billing
    from bot.core.repository import Repository
    from ledger.storage.sqlite import SqliteStore

    if _sqlite_template is None or not _sqlite_template.exists():
        template = folder / "migrated.db"
        store = await SqliteStore.open(template)
        try:
            await Repository(store).migrate()
            await migrate_billing(store)
        finally:
            await store.close()  # the last connection: the WAL is checkpointed and removed
        assert not template.with_name(template.name + "-wal").exists()
        _sqlite_template = template
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_template, path)


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
