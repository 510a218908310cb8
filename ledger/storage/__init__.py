"""The storage seam: the Store protocol, and the engine chosen by the database setting
(a file path for SQLite, `postgresql://...` for PostgreSQL)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ledger.storage.protocol import (
    Checkpointed,
    Committed,
    Compacted,
    Connection,
    Operation,
    Row,
    Store,
)

_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.I)


def lock_rows(conn: object) -> str:
    """The suffix that locks the rows a write reads before it writes them: `FOR UPDATE`
    on PostgreSQL; nothing on SQLite, whose single writer already serializes writes."""
    return " FOR UPDATE" if getattr(conn, "dialect", "sqlite") == "postgresql" else ""


async def serialize(conn: Connection, key: str) -> None:
    """Make the writes under `key` take turns until the caller's transaction ends: a
    transaction-scoped advisory lock on PostgreSQL (several webhook sidecars applying
    one event, or two effects of one order); nothing on SQLite, whose writer is one."""
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        number = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
        await conn.execute("SELECT pg_advisory_xact_lock(?)", (number - (1 << 63),))


def is_postgres(database: str | Path) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))


def shown(database: str | Path) -> str:
    """The database as it may be printed or logged: a PostgreSQL address without its
    password (in the user part or a `password=` parameter)."""
    text = str(database)
    if not is_postgres(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = _PASSWORD.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


async def open_store(database: str | Path, *, secure_delete: bool = False) -> Store:
    """Open (and migrate the ledger's schema on) the configured database."""
    if is_postgres(database):
        from ledger.storage.postgres import PostgresStore  # asyncpg only when asked for

        return await PostgresStore.open(str(database))
    from ledger.storage.sqlite import SqliteStore

    return await SqliteStore.open(database, secure_delete=secure_delete)


__all__ = [
    "Checkpointed",
    "Committed",
    "Compacted",
    "Connection",
    "Operation",
    "Row",
    "Store",
    "is_postgres",
    "lock_rows",
    "open_store",
    "serialize",
    "shown",
]
