"""`python -m bot storage copy --to postgresql://...`: a SQLite database into an empty
PostgreSQL one, table by table, ids and rowids kept (so period and hold states, the audit
trail and verify's checkpoint mean the same there), embeddings as bytes.

Both sides must already carry every part's schema (the caller opens them as the bot
does, which migrates). Tables are copied parents first (foreign keys), in pages, each
table in one transaction; identity counters are then moved past the copied ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ledger.storage.postgres import PostgresStore
from ledger.storage.sqlite import SqliteStore

PAGE = 2_000
# Bookkeeping each side keeps for itself: its own schema versions, and the processes
# registered with it (the copy's own, on both sides; the source's others are stopped).
SKIP = {"app_schema", "billing_schema", "schema_versions", "instances"}


class TargetNotEmpty(Exception):
    """The target database already holds rows: copying would mix two ledgers."""


@dataclass(frozen=True)
class Copied:
    tables: dict[str, int]  # rows copied per table


async def _sqlite_tables(source: SqliteStore) -> list[str]:
    rows = await source.reader.execute_fetchall(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    )
    # A full-text table (FTS5) and its shadow tables: PostgreSQL indexes the text itself.
    virtual = [r[0] for r in rows if (r[1] or "").upper().startswith("CREATE VIRTUAL")]
    names = [
        r[0]
        for r in rows
        if r[0] not in SKIP and not any(r[0] == v or r[0].startswith(v + "_") for v in virtual)
    ]
    parents: dict[str, set[str]] = {}
    for name in names:
        keys = await source.reader.execute_fetchall(f"PRAGMA foreign_key_list({name})")
        parents[name] = {k[2] for k in keys if k[2] != name and k[2] in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:  # a cycle: copy the rest as they come
            ready = [n for n in names if n not in ordered]
        ordered += ready
    return ordered


async def _pg_columns(target: PostgresStore, table: str) -> list[str]:
    rows = await target.reader.execute_fetchall(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        (table,),
    )
    return [r[0] for r in rows]


async def check_empty(target: PostgresStore, tables: list[str]) -> None:
    for table in tables:
        if not await _pg_columns(target, table):
            continue
        rows = await target.reader.execute_fetchall(f"SELECT 1 FROM {table} LIMIT 1")
        if rows:
            raise TargetNotEmpty(f"the target's {table} has rows: copy only into an empty one")


async def copy(
    source: SqliteStore,
    target: PostgresStore,
    progress: Callable[[str, int], None] | None = None,
) -> Copied:
    tables = await _sqlite_tables(source)
    await check_empty(target, tables)
    counts: dict[str, int] = {}
    for table in tables:
        columns = await _pg_columns(target, table)
        if not columns:
            raise TargetNotEmpty(f"the target has no table {table}: migrate it first")
        info = await source.reader.execute_fetchall(f"PRAGMA table_info({table})")
        present = {r[1] for r in info}
        if "rowid" in columns and "rowid" not in present:
            present.add("rowid")  # holds: SQLite's implicit rowid is a column on PostgreSQL
        wanted = [c for c in columns if c in present]
        select = f"SELECT {', '.join(wanted)} FROM {table} ORDER BY rowid LIMIT ? OFFSET ?"
        insert = (
            f"INSERT INTO {table} ({', '.join(wanted)}) VALUES ({', '.join('?' * len(wanted))})"
        )
        done = 0

        async def page(conn: object, rows: list[tuple[object, ...]], insert: str = insert) -> None:
            await conn.executemany(insert, rows)  # type: ignore[attr-defined]

        while True:
            rows = [tuple(r) for r in await source.reader.execute_fetchall(select, (PAGE, done))]
            if not rows:
                break
            await target.write(lambda conn, rows=rows: page(conn, rows))  # type: ignore[misc]
            done += len(rows)
            if progress:
                progress(table, done)
        counts[table] = done
        await _move_identity(target, table)
    return Copied(counts)


async def _move_identity(target: PostgresStore, table: str) -> None:
    """Identity counters past the copied ids, so the next row gets a new id."""
    rows = await target.reader.execute_fetchall(
        "SELECT column_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = ? AND is_identity = 'YES'",
        (table,),
    )
    for (column,) in rows:

        async def op(conn: object, column: str = column) -> None:
            await conn.execute(  # type: ignore[attr-defined]
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            )

        await target.write(op)
