"""Archiving resolved holds: the hold row goes, the audit row it produced stays its record.

Each paid call leaves a hold row and an audit row; once the hold is resolved the audit row
already holds everything the ledger still needs of it (hold id, account, actor, operation,
model, status, charge, and since migration 5 the amount held). So a hold resolved longer
ago than its time to live is deleted, in id order of the audit log, and the mark
`holds_archived_through` in ledger_state records how far: below it an audit row may name
a hold that no longer has a row (ledger/verify.py reads the invariant that way).

Why on the writer's thread with foreign keys off: token_usage.hold_id references
holds(hold_id), and an archived hold is precisely a referenced row that is gone. The
pragma can change only outside a transaction, so each batch is a job of its own between
two group commits (Store.on_writer), short enough that paid calls only wait for one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

BATCH = 2_000  # audit rows looked at per transaction
MARK = "holds_archived_through"


def archive_batch(raw: sqlite3.Connection, cutoff: str, batch: int = BATCH) -> int | None:
    """Archive the holds of the next `batch` audit rows resolved before `cutoff`.
    Returns how many were deleted, or None when nothing is left to look at."""
    from ledger.storage.sqlite import SyncConnection, drive

    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        raw.execute("BEGIN IMMEDIATE")
        try:
            deleted = drive(_batch(SyncConnection(raw), cutoff, batch))
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
    finally:
        raw.execute("PRAGMA foreign_keys=ON")
    return deleted


async def postgres_batch(conn: Any, cutoff: str, batch: int = BATCH) -> int | None:
    """The same batch in a write transaction of the PostgreSQL store (whose audit rows
    carry no foreign key to holds: see ledger/storage/migrate.py)."""
    return await _batch(conn, cutoff, batch)


async def _one(conn: Any, sql: str, parameters: Any = ()) -> Any:
    rows = list(await conn.execute_fetchall(sql, parameters))
    return rows[0] if rows else None


async def _batch(conn: Any, cutoff: str, batch: int) -> int | None:
    row = await _one(conn, "SELECT value FROM ledger_state WHERE key = ?", (MARK,))
    mark = int(row[0]) if row else 0
    top = (await _one(conn, "SELECT COALESCE(MAX(id), 0) FROM token_usage"))[0]
    high = min(top, mark + batch)
    # Audit rows are appended in time order: stop at the first one still too young.
    young = (
        await _one(
            conn,
            "SELECT MIN(id) FROM token_usage WHERE id > ? AND id <= ? AND created_at > ?",
            (mark, high, cutoff),
        )
    )[0]
    if young is not None:
        high = young - 1
    # Never the newest hold: SQLite gives a new row the largest rowid plus one, and
    # verify relies on rowids that only grow (holds below its mark are settled). The
    # mark stops before its audit row, so a later batch takes it once it is not newest.
    newest = await _one(
        conn,
        "SELECT t.id FROM holds h JOIN token_usage t ON t.hold_id = h.hold_id"
        " WHERE h.rowid = (SELECT MAX(rowid) FROM holds)",
    )
    if newest is not None and mark < newest[0] <= high:
        high = newest[0] - 1
    if high <= mark:
        return None
    cursor = await conn.execute(
        "DELETE FROM holds WHERE hold_id IN (SELECT hold_id FROM token_usage"
        " WHERE id > ? AND id <= ? AND hold_id IS NOT NULL) AND status != 'pending'"
        " AND rowid < (SELECT MAX(rowid) FROM holds)",
        (mark, high),
    )
    await conn.execute(
        "INSERT INTO ledger_state (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (MARK, str(high)),
    )
    return int(cursor.rowcount)
