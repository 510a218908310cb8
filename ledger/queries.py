"""Read-only queries. They never write: an account whose period has ended is shown as
its next write will leave it (usage back to 0), without rolling it over here."""

from __future__ import annotations

import csv
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import IO, Any

from ledger import members, totals
from ledger.accounts import Plan, available
from ledger.clock import from_text, to_text
from ledger.members import MemberSpending
from ledger.periods import add_months, period_containing
from ledger.records import Balance, UsageEntry
from ledger.storage import Connection


def _effective(row: dict[str, Any], now: datetime) -> tuple[dict[str, Any], bool]:
    """The row as the next write would see it, and whether its period has rolled over."""
    if now < from_text(row["period_end"]):
        return row, False
    start, end = period_containing(from_text(row["period_anchor"]), now)
    return {
        **row,
        "tokens_used": 0,
        "period_start": to_text(start),
        "period_end": to_text(end),
    }, True


def balance_from_row(row: dict[str, Any], now: datetime) -> Balance:
    row, _ = _effective(row, now)
    return Balance(
        account_id=row["account_id"],
        plan_type=row["plan_type"],
        tokens_limit=row["tokens_limit"],
        tokens_used=row["tokens_used"],
        tokens_held=row["tokens_held"],
        bonus_tokens=row["bonus_tokens"],
        available=available(
            row["tokens_limit"], row["tokens_used"], row["tokens_held"], row["bonus_tokens"]
        ),
        period_start=from_text(row["period_start"]),
        period_end=from_text(row["period_end"]),
    )


async def _row(conn: Connection, account_id: str) -> dict[str, Any] | None:
    rows = await conn.execute_fetchall(
        "SELECT * FROM usage_limits WHERE account_id = ?", (account_id,)
    )
    return dict(rows[0]) if rows else None


async def balance(conn: Connection, account_id: str, free: Plan, now: datetime) -> Balance:
    row = await _row(conn, account_id)
    if row is None:  # not created yet: shown as it will be created
        return Balance(
            account_id,
            free.name,
            free.monthly_tokens,
            0,
            0,
            0,
            free.monthly_tokens,
            now,
            add_months(now, 1),
        )
    return balance_from_row(row, now)


async def member_spending(
    conn: Connection, account_id: str, user_id: str, roles: list[str], now: datetime
) -> MemberSpending:
    row = await _row(conn, account_id)
    cap = await members.cap_for(conn, account_id, user_id, roles)
    if row is None:
        return MemberSpending(account_id, user_id, 0, 0, cap)
    seq = row["period_seq"] + (1 if _effective(row, now)[1] else 0)
    used, held = await members.spending_row(conn, account_id, user_id, seq)
    return MemberSpending(account_id, user_id, used, held, cap)


# What `usage_by` groups the period's charges by: the kinds of ledger/totals.py.
USAGE_KEYS = tuple(totals.KINDS)


async def usage_by(
    conn: Connection, account_id: str, by: str, now: datetime
) -> list[tuple[str | None, int]]:
    """This period's charges grouped by member, agent, operation or day (YYYY-MM-DD):
    the largest first, days in order. A None key: charges with no member or agent.
    Read from the period's counters: its cost does not grow with the account's rows."""
    row = await _row(conn, account_id)
    if row is None or _effective(row, now)[1]:
        return []
    return await totals.read(conn, account_id, row["period_seq"], by)


async def usage_by_operation(conn: Connection, account_id: str, now: datetime) -> dict[str, int]:
    return {str(k): n for k, n in await usage_by(conn, account_id, "operation", now)}


_USAGE_COLUMNS = (
    "id, account_id, user_id, guild_id, operation_type, model_used, tokens_used, bonus_delta,"
    " status, hold_id, details, created_at"
)


async def history(conn: Connection, account_id: str, limit: int) -> list[UsageEntry]:
    rows = await conn.execute_fetchall(
        f"SELECT {_USAGE_COLUMNS} FROM token_usage WHERE account_id = ? ORDER BY id DESC LIMIT ?",
        (account_id, limit),
    )
    return [UsageEntry(*r) for r in rows]


EXPORT_PAGE = 2_000


async def export_csv(
    conn: Connection,
    out: IO[str],
    *,
    page: int = EXPORT_PAGE,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """The audit log as CSV, through the last row committed when it starts.

    Keyset pages (`id > last`; on SQLite, id ranges), each its own short read: a long
    export never holds one snapshot, which would pin every WAL page written while it
    runs. The log is
    append-only, so the pages together are exactly the log as it was at the start.
    """
    writer = csv.writer(out)
    writer.writerow([c.strip() for c in _USAGE_COLUMNS.split(",")])
    top = (await conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM token_usage"))[0][0]
    run = getattr(conn, "run", None)  # SQLite's reader pool: a page streamed on its thread
    if run is not None:
        return await _export_streamed(run, writer, top, page, progress)
    last, count = 0, 0
    while last < top:
        async with conn.execute(
            f"SELECT {_USAGE_COLUMNS} FROM token_usage WHERE id > ? AND id <= ?"
            " ORDER BY id LIMIT ?",
            (last, top, page),
        ) as cursor:
            cursor.row_factory = None  # plain tuples: csv needs no column names
            rows = await cursor.fetchall()
        if not rows:
            break
        writer.writerows(rows)
        count += len(rows)
        last = rows[-1][0]
        if progress:
            progress(last, top)
    return count


async def _export_streamed(
    run: Callable[[Callable[[Any], int]], Awaitable[int]],
    writer: Any,
    top: int,
    page: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """On SQLite: each page is read and written whole on a reader thread, as a bare
    sqlite3 loop does. Fetching each page on aiosqlite's thread and writing it on the
    event loop's cost 1.27x the bare loop at 10^6 rows (every page crossed between the
    two threads, and 20k rows of tuples stayed alive across the hop). Pages are id
    ranges, each one statement: its own short snapshot, as above."""

    def one_page(raw: Any, low: int, high: int) -> int:
        cursor = raw.cursor()
        try:
            cursor.row_factory = None  # plain tuples: csv needs no column names
            rows = cursor.execute(
                f"SELECT {_USAGE_COLUMNS} FROM token_usage WHERE id > ? AND id <= ? ORDER BY id",
                (low, high),
            ).fetchall()
        finally:
            cursor.close()
        # Written after the read has ended: streaming the cursor into the writer kept a
        # read open nearly all the time, and the WAL could not restart (101 MiB in the
        # bench instead of 12); a small page costs no more than the stream.
        writer.writerows(rows)
        return len(rows)

    low, count = 0, 0
    while low < top:
        high = min(top, low + page)
        count += await run(functools.partial(one_page, low=low, high=high))
        low = high
        if progress:
            progress(low, top)
    return count
