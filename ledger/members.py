"""Members' spending inside an account's shared pool, and the caps that bound it.

Invariants (checked by `verify()` and by the stateful tests):
- member_spending.tokens_used = the member's charges in the row's period_seq;
- member_spending.tokens_held = the member's pending holds on the account;
- a member charged in the account's current period has a row of that period.

A cap is checked by the same conditional upsert that adds a hold to the member's counter,
inside the reserve's write transaction: two commands of one member can never both pass
it. A member's row restarts at 0 when the account's period has moved on, the first time
the row is written in the new period (as usage_limits rolls over lazily).

Which cap applies: the member's own, else the first of their roles that has one (the
caller passes roles highest first, as the server ranks them), else the account's default.
Caps apply to server accounts only; a user's own account (a DM) has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

SCOPES = ("member", "role", "default")


@dataclass(frozen=True)
class Cap:
    scope: str  # member | role | default
    subject_id: str  # the user id, the role id, or "" for the default
    tokens: int


@dataclass(frozen=True)
class MemberSpending:
    """One member's figures in the account's current period, and the cap that applies."""

    account_id: str
    user_id: str
    tokens_used: int
    tokens_held: int
    cap: Cap | None

    @property
    def remaining(self) -> int | None:
        if self.cap is None:
            return None
        return max(0, self.cap.tokens - self.tokens_used - self.tokens_held)


def capped(account_id: str) -> bool:
    return account_id.startswith("guild:")


def pick_cap(caps: Sequence[Cap], user_id: str, roles: Sequence[str]) -> Cap | None:
    """The most specific cap: the member's, the highest role's, the default."""
    by_key = {(c.scope, c.subject_id): c for c in caps}
    if (own := by_key.get(("member", user_id))) is not None:
        return own
    for role in roles:
        if (cap := by_key.get(("role", role))) is not None:
            return cap
    return by_key.get(("default", ""))


async def all_caps(conn: aiosqlite.Connection, account_id: str) -> list[Cap]:
    rows = await conn.execute_fetchall(
        "SELECT scope, subject_id, tokens FROM member_caps WHERE account_id = ?"
        " ORDER BY scope, subject_id",
        (account_id,),
    )
    return [Cap(r[0], r[1], r[2]) for r in rows]


async def cap_for(
    conn: aiosqlite.Connection, account_id: str, user_id: str, roles: Sequence[str]
) -> Cap | None:
    if not capped(account_id):
        return None
    marks = ", ".join("?" * len(roles))
    rows = await conn.execute_fetchall(
        "SELECT scope, subject_id, tokens FROM member_caps WHERE account_id = ?"
        " AND (scope = 'default' OR (scope = 'member' AND subject_id = ?)"
        f" OR (scope = 'role' AND subject_id IN ({marks})))",
        (account_id, user_id, *roles),
    )
    return pick_cap([Cap(r[0], r[1], r[2]) for r in rows], user_id, roles)


async def hold_in(
    conn: aiosqlite.Connection,
    account_id: str,
    user_id: str,
    period_seq: int,
    amount: int,
    cap: int | None,
) -> bool:
    """Add `amount` to the member's held tokens if their cap allows it; False if not."""
    rows = await conn.execute_fetchall(
        "INSERT INTO member_spending (account_id, user_id, period_seq, tokens_used, tokens_held)"
        " SELECT :account, :user, :seq, 0, :amount WHERE :cap IS NULL OR :amount <= :cap"
        " ON CONFLICT (account_id, user_id) DO UPDATE SET"
        " tokens_used = CASE WHEN member_spending.period_seq = :seq"
        " THEN member_spending.tokens_used ELSE 0 END,"
        " tokens_held = member_spending.tokens_held + :amount, period_seq = :seq"
        " WHERE :cap IS NULL OR (CASE WHEN member_spending.period_seq = :seq"
        " THEN member_spending.tokens_used ELSE 0 END)"
        " + member_spending.tokens_held + :amount <= :cap"
        " RETURNING tokens_held",
        {"account": account_id, "user": user_id, "seq": period_seq, "amount": amount, "cap": cap},
    )
    return bool(rows)


async def unhold_in(conn: aiosqlite.Connection, account_id: str, user_id: str, amount: int) -> None:
    """Undo `hold_in` when the account itself refused the reserve."""
    await conn.execute(
        "UPDATE member_spending SET tokens_held = tokens_held - ?"
        " WHERE account_id = ? AND user_id = ?",
        (amount, account_id, user_id),
    )


async def settle_in(
    conn: aiosqlite.Connection,
    account_id: str,
    user_id: str,
    period_seq: int,
    held: int,
    charged: int,
) -> None:
    """A member's hold of `held` tokens ended, charging `charged` in period `period_seq`."""
    await conn.execute(
        "INSERT INTO member_spending (account_id, user_id, period_seq, tokens_used, tokens_held)"
        " VALUES (:account, :user, :seq, :charged, 0)"
        " ON CONFLICT (account_id, user_id) DO UPDATE SET"
        " tokens_used = CASE WHEN member_spending.period_seq = :seq"
        " THEN member_spending.tokens_used ELSE 0 END + :charged,"
        " tokens_held = member_spending.tokens_held - :held, period_seq = :seq",
        {
            "account": account_id,
            "user": user_id,
            "seq": period_seq,
            "held": held,
            "charged": charged,
        },
    )


async def spending_row(
    conn: aiosqlite.Connection, account_id: str, user_id: str, period_seq: int
) -> tuple[int, int]:
    """(used in `period_seq`, held) for one member; a row of an earlier period used 0."""
    rows = await conn.execute_fetchall(
        "SELECT period_seq, tokens_used, tokens_held FROM member_spending"
        " WHERE account_id = ? AND user_id = ?",
        (account_id, user_id),
    )
    if not rows:
        return 0, 0
    r = rows[0]
    return (r[1] if r[0] == period_seq else 0), r[2]


async def set_cap_in(conn: aiosqlite.Connection, account_id: str, cap: Cap, now: str) -> int | None:
    """Set a cap; returns the one it replaced (None if there was none)."""
    old = await _cap_tokens(conn, account_id, cap.scope, cap.subject_id)
    await conn.execute(
        "INSERT INTO member_caps (account_id, scope, subject_id, tokens, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, scope, subject_id)"
        " DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
        (account_id, cap.scope, cap.subject_id, cap.tokens, now),
    )
    return old


async def clear_cap_in(
    conn: aiosqlite.Connection, account_id: str, scope: str, subject_id: str
) -> int | None:
    """Remove a cap; returns it (None if there was none)."""
    old = await _cap_tokens(conn, account_id, scope, subject_id)
    await conn.execute(
        "DELETE FROM member_caps WHERE account_id = ? AND scope = ? AND subject_id = ?",
        (account_id, scope, subject_id),
    )
    return old


async def _cap_tokens(
    conn: aiosqlite.Connection, account_id: str, scope: str, subject_id: str
) -> int | None:
    rows = await conn.execute_fetchall(
        "SELECT tokens FROM member_caps WHERE account_id = ? AND scope = ? AND subject_id = ?",
        (account_id, scope, subject_id),
    )
    return int(rows[0][0]) if rows else None


async def verify_in(conn: aiosqlite.Connection) -> list[tuple[str, str]]:
    """(account, message) for every member counter that disagrees with the audit log."""
    found: list[tuple[str, str]] = []
    rows: list[Any] = await conn.execute_fetchall(
        """
        SELECT m.account_id, m.user_id, m.period_seq, m.tokens_used, m.tokens_held,
          (SELECT COALESCE(SUM(t.tokens_used), 0) FROM token_usage t
            WHERE t.account_id = m.account_id AND t.user_id = m.user_id
            AND t.period_seq = m.period_seq AND t.status = 'charged') AS charged,
          (SELECT COALESCE(SUM(h.amount), 0) FROM holds h
            WHERE h.account_id = m.account_id AND h.user_id = m.user_id
            AND h.status = 'pending') AS pending
        FROM member_spending m ORDER BY m.account_id, m.user_id
        """
    )
    for r in rows:
        who = f"member {r['user_id']}"
        if r["tokens_used"] != r["charged"]:
            found.append(
                (
                    r["account_id"],
                    f"{who} tokens_used {r['tokens_used']} != their charges in period"
                    f" {r['period_seq']} ({r['charged']})",
                )
            )
        if r["tokens_held"] != r["pending"]:
            found.append(
                (
                    r["account_id"],
                    f"{who} tokens_held {r['tokens_held']} != their pending holds ({r['pending']})",
                )
            )
    missing = await conn.execute_fetchall(
        """
        SELECT t.account_id, t.user_id, SUM(t.tokens_used) AS charged
        FROM token_usage t JOIN usage_limits u ON u.account_id = t.account_id
        WHERE t.status = 'charged' AND t.user_id IS NOT NULL AND t.period_seq = u.period_seq
          AND NOT EXISTS (SELECT 1 FROM member_spending m WHERE m.account_id = t.account_id
            AND m.user_id = t.user_id AND m.period_seq = t.period_seq)
        GROUP BY t.account_id, t.user_id
        """
    )
    for r in missing:
        found.append(
            (
                r["account_id"],
                f"member {r['user_id']} has {r['charged']} tokens of charges this period"
                " but no spending counter for it",
            )
        )
    return found
