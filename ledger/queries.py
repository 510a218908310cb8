"""Read-only queries. They never write: an account whose period has ended is shown as
its next write will leave it (usage back to 0), without rolling it over here."""

from __future__ import annotations

import csv
from datetime import datetime
from typing import IO, Any

import aiosqlite

from ledger import members
from ledger.accounts import Plan, available
from ledger.clock import from_text, to_text
from ledger.members import MemberSpending
from ledger.periods import add_months, period_containing
from ledger.records import Balance, UsageEntry, Violation


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


async def _row(conn: aiosqlite.Connection, account_id: str) -> dict[str, Any] | None:
    rows = await conn.execute_fetchall(
        "SELECT * FROM usage_limits WHERE account_id = ?", (account_id,)
    )
    return dict(rows[0]) if rows else None


async def balance(
    conn: aiosqlite.Connection, account_id: str, free: Plan, now: datetime
) -> Balance:
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
    conn: aiosqlite.Connection, account_id: str, user_id: str, roles: list[str], now: datetime
) -> MemberSpending:
    row = await _row(conn, account_id)
    cap = await members.cap_for(conn, account_id, user_id, roles)
    if row is None:
        return MemberSpending(account_id, user_id, 0, 0, cap)
    seq = row["period_seq"] + (1 if _effective(row, now)[1] else 0)
    used, held = await members.spending_row(conn, account_id, user_id, seq)
    return MemberSpending(account_id, user_id, used, held, cap)


async def usage_by_operation(
    conn: aiosqlite.Connection, account_id: str, now: datetime
) -> dict[str, int]:
    row = await _row(conn, account_id)
    if row is None or _effective(row, now)[1]:
        return {}
    rows = await conn.execute_fetchall(
        "SELECT operation_type, SUM(tokens_used) FROM token_usage WHERE account_id = ?"
        " AND period_seq = ? AND status = 'charged' GROUP BY operation_type ORDER BY 2 DESC",
        (account_id, row["period_seq"]),
    )
    return {r[0]: int(r[1]) for r in rows}


_USAGE_COLUMNS = (
    "id, account_id, user_id, guild_id, operation_type, model_used, tokens_used, bonus_delta,"
    " status, hold_id, details, created_at"
)


async def history(conn: aiosqlite.Connection, account_id: str, limit: int) -> list[UsageEntry]:
    rows = await conn.execute_fetchall(
        f"SELECT {_USAGE_COLUMNS} FROM token_usage WHERE account_id = ? ORDER BY id DESC LIMIT ?",
        (account_id, limit),
    )
    return [UsageEntry(*r) for r in rows]


async def export_csv(conn: aiosqlite.Connection, out: IO[str]) -> int:
    writer = csv.writer(out)
    writer.writerow([c.strip() for c in _USAGE_COLUMNS.split(",")])
    count = 0
    async with conn.execute(f"SELECT {_USAGE_COLUMNS} FROM token_usage ORDER BY id") as cursor:
        async for r in cursor:
            writer.writerow(list(r))
            count += 1
    return count


async def verify(conn: aiosqlite.Connection) -> list[Violation]:
    """Every invariant of ledger/ledger.py's docstring, one Violation per breach."""
    # One read transaction, so all checks see the same snapshot.
    await conn.execute("BEGIN")
    try:
        return await _verify(conn)
    finally:
        await conn.execute("COMMIT")


async def _verify(conn: aiosqlite.Connection) -> list[Violation]:
    found: list[Violation] = []
    rows = await conn.execute_fetchall(
        """
        SELECT u.account_id, u.tokens_limit, u.tokens_used, u.tokens_held, u.bonus_tokens,
          (SELECT COALESCE(SUM(t.tokens_used + t.bonus_delta), 0) FROM token_usage t
            WHERE t.account_id = u.account_id AND t.status = 'charged'
            AND t.period_seq = u.period_seq) AS charged,
          (SELECT COALESCE(SUM(h.amount), 0) FROM holds h
            WHERE h.account_id = u.account_id AND h.status = 'pending') AS pending,
          (SELECT COALESCE(SUM(t.bonus_delta), 0) FROM token_usage t
            WHERE t.account_id = u.account_id) AS bonus
        FROM usage_limits u ORDER BY u.account_id
        """
    )
    for r in rows:
        a = r["account_id"]
        for name in ("tokens_limit", "tokens_used", "tokens_held", "bonus_tokens"):
            if r[name] < 0:
                found.append(Violation(a, f"{name} is negative ({r[name]})"))
        if r["tokens_used"] != r["charged"]:
            found.append(
                Violation(
                    a, f"tokens_used {r['tokens_used']} != this period's charges {r['charged']}"
                )
            )
        if r["tokens_held"] != r["pending"]:
            found.append(
                Violation(a, f"tokens_held {r['tokens_held']} != pending holds {r['pending']}")
            )
        if r["bonus_tokens"] != r["bonus"]:
            found.append(
                Violation(
                    a, f"bonus_tokens {r['bonus_tokens']} != sum of bonus changes {r['bonus']}"
                )
            )
    found += [Violation(a, message) for a, message in await members.verify_in(conn)]
    holds = await conn.execute_fetchall(
        """
        SELECT h.hold_id, h.account_id, h.status, h.charged, COUNT(t.id) AS entries,
               COALESCE(SUM(t.tokens_used), 0) AS logged
        FROM holds h LEFT JOIN token_usage t ON t.hold_id = h.hold_id
        GROUP BY h.hold_id
        HAVING (h.status = 'pending' AND entries != 0)
            OR (h.status != 'pending' AND entries != 1)
            OR (h.status = 'committed' AND logged != h.charged)
            OR (h.status != 'committed' AND logged != 0)
        """
    )
    for h in holds:
        found.append(
            Violation(
                h["account_id"],
                f"hold {h['hold_id']} ({h['status']}) has {h['entries']} audit entries"
                f" logging {h['logged']} tokens (charged {h['charged']})",
            )
        )
    return found
