"""The storage seam: the Store protocol, and the engine chosen by the database setting
(a file path for SQLite, `postgresql://...` for PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from ledger.storage.protocol import Checkpointed, Compacted, Connection, Operation, Row, Store


def lock_rows(conn: object) -> str:
    """The suffix that locks the rows a write reads before it writes them: `FOR UPDATE`
    on PostgreSQL; nothing on SQLite, whose single writer already serializes writes."""
    return " FOR UPDATE" if getattr(conn, "dialect", "sqlite") == "postgresql" else ""


def is_postgres(database: str | Path) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))


async def open_store(database: str | Path, *, secure_delete: bool = False) -> Store:
    """Open (and migrate the ledger's schema on) the configured database."""
    if is_postgres(database):
        from ledger.storage.postgres import PostgresStore  # asyncpg only when asked for

        return await PostgresStore.open(str(database))
    from ledger.storage.sqlite import SqliteStore

    return await SqliteStore.open(database, secure_delete=secure_delete)


__all__ = [
    "Checkpointed",
    "Compacted",
    "Connection",
    "Operation",
    "Row",
    "Store",
    "is_postgres",
    "lock_rows",
    "open_store",
]
