"""Each period's charges summed by member, agent, operation and day (table usage_totals).

Why counters rather than a query of the audit log: "usage this period" (/tokens, /usage,
`admin usage`) would otherwise read every charge row of the period, so its cost grew with
the account's traffic, and with an index lookup whose depth grows with the account's
whole history. The counters are written in the transaction of the charge itself
(`add_in`, from Ledger._charge_in), so they never show a charge that did not commit, nor
miss one that did.

Invariant (checked by `verify --full`, `check_in`): every counter equals the sum of
tokens_used over the 'charged' audit rows of its account and period with that subject,
and every such sum has its counter. A subject is '' for a charge with no member or agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.storage import Connection

# What each kind groups by, as an expression over an audit row (the migration's too).
KINDS: dict[str, str] = {
    "member": "COALESCE(user_id, '')",
    "agent": "COALESCE(agent, '')",
    "operation": "operation_type",
    "day": "substr(created_at, 1, 10)",
}

_UPSERT = (
    "INSERT INTO usage_totals (account_id, period_seq, kind, subject, tokens) VALUES"
    + ", ".join("(?, ?, ?, ?, ?)" for _ in KINDS)
    + " ON CONFLICT (account_id, period_seq, kind, subject)"
    " DO UPDATE SET tokens = usage_totals.tokens + excluded.tokens"
)


async def add_in(
    conn: Connection,
    account_id: str,
    period_seq: int,
    *,
    user_id: str | None,
    agent: str | None,
    operation: str,
    created_at: str,
    tokens: int,
) -> None:
    """Count one charge, inside the transaction that writes its audit row: one statement
    for the four counters (each a primary-key upsert)."""
    subjects = (user_id or "", agent or "", operation, created_at[:10])
    args: list[Any] = []
    for kind, subject in zip(KINDS, subjects, strict=True):
        args += (account_id, period_seq, kind, subject, tokens)
    await conn.execute(_UPSERT, args)


async def read(
    conn: Connection, account_id: str, period_seq: int, kind: str
) -> list[tuple[str | None, int]]:
    """The period's counters of one kind: the largest first (days in order); None for
    the charges that served no member or agent."""
    order = "subject" if kind == "day" else "tokens DESC, subject"
    rows = await conn.execute_fetchall(
        "SELECT subject, tokens FROM usage_totals WHERE account_id = ? AND period_seq = ?"
        f" AND kind = ? ORDER BY {order}",
        (account_id, period_seq, kind),
    )
    empty = kind in {"member", "agent"}
    return [(None if empty and r[0] == "" else r[0], int(r[1])) for r in rows]


async def check_in(
    conn: Connection,
    accounts: Sequence[str],
) -> list[tuple[str, str]]:
    """(account, message) for each counter of these accounts that differs from the
    audit log, or each sum of the log with no counter. One read of their charge rows."""
    if not accounts:
        return []
    marks = ", ".join("?" * len(accounts))
    found: list[tuple[str, str]] = []
    counted: dict[tuple[str, int, str, str], int] = {}
    for kind, expression in KINDS.items():
        rows = await conn.execute_fetchall(
            f"SELECT account_id, period_seq, {expression}, SUM(tokens_used) FROM token_usage"
            f" WHERE account_id IN ({marks}) AND status = 'charged' GROUP BY 1, 2, 3",
            tuple(accounts),
        )
        for account, seq, subject, tokens in rows:
            counted[(account, int(seq), kind, subject)] = int(tokens)
    stored = await conn.execute_fetchall(
        "SELECT account_id, period_seq, kind, subject, tokens FROM usage_totals"
        f" WHERE account_id IN ({marks})",
        tuple(accounts),
    )
    seen: set[tuple[str, int, str, str]] = set()
    for account, seq, kind, subject, tokens in stored:
        key = (account, int(seq), kind, subject)
        seen.add(key)
        logged = counted.get(key, 0)
        if int(tokens) != logged:
            found.append((account, _describe(key, f"counts {tokens}, the log {logged}")))
    for key, logged in counted.items():
        if key not in seen:
            found.append((key[0], _describe(key, f"is missing (the log has {logged})")))
    return found


def _describe(key: tuple[str, int, str, str], what: str) -> str:
    _, seq, kind, subject = key
    return f"usage total of period {seq}, {kind} {subject!r}, {what}"
