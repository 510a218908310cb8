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

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.storage import Connection

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


async def all_caps(conn: Connection, account_id: str) -> list[Cap]:
    rows = await conn.execute_fetchall(
        "SELECT scope, subject_id, tokens FROM member_caps WHERE account_id = ?"
        " ORDER BY scope, subject_id",
        (account_id,),
    )
    return [Cap(r[0], r[1], r[2]) for r in rows]


async def cap_for(
    conn: Connection, account_id: str, user_id: str, roles: Sequence[str]
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
    conn: Connection,
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


async def unhold_in(conn: Connection, account_id: str, user_id: str, amount: int) -> None:
    """Undo `hold_in` when the account itself refused the reserve."""
    await conn.execute(
        "UPDATE member_spending SET tokens_held = tokens_held - ?"
        " WHERE account_id = ? AND user_id = ?",
        (amount, account_id, user_id),
    )


async def settle_in(
    conn: Connection,
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
    conn: Connection, account_id: str, user_id: str, period_seq: int
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


async def set_cap_in(conn: Connection, account_id: str, cap: Cap, now: str) -> int | None:
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
    conn: Connection, account_id: str, scope: str, subject_id: str
) -> int | None:
    """Remove a cap; returns it (None if there was none)."""
    old = await _cap_tokens(conn, account_id, scope, subject_id)
    await conn.execute(
        "DELETE FROM member_caps WHERE account_id = ? AND scope = ? AND subject_id = ?",
        (account_id, scope, subject_id),
    )
    return old


async def _cap_tokens(conn: Connection, account_id: str, scope: str, subject_id: str) -> int | None:
    rows = await conn.execute_fetchall(
        "SELECT tokens FROM member_caps WHERE account_id = ? AND scope = ? AND subject_id = ?",
        (account_id, scope, subject_id),
    )
    return int(rows[0][0]) if rows else None


ACCOUNT_PAGE = 500


async def verify_in(
    conn: Connection, accounts: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """(account, message) for every member counter that disagrees with the audit log.

    Only the current period's counters matter to caps (an earlier period's row restarts
    at 0 on its next write), so each account's check reads its current period's charges
    and its pending holds: the cost follows the period, not the ledger's age. Accounts go
    in keyset pages, each page in one read snapshot, so the comparison is exact.
    `accounts` limits the check to those (the incremental verify: the accounts written
    since its last clean run)."""
    found: list[tuple[str, str]] = []
    if accounts is not None:
        chosen = sorted(accounts)
        for start in range(0, len(chosen), ACCOUNT_PAGE):
            some = chosen[start : start + ACCOUNT_PAGE]
            marks = ", ".join("?" * len(some))
            found += await _page(conn, f"IN ({marks})", tuple(some))
        return found
    after = ""
    while True:
        page = await conn.execute_fetchall(
            "SELECT account_id FROM usage_limits WHERE account_id > ? ORDER BY account_id LIMIT ?",
            (after, ACCOUNT_PAGE),
        )
        if not page:
            break
        low, high = page[0][0], page[-1][0]
        found += await _page(conn, "BETWEEN ? AND ?", (low, high))
        after = high
    return found


async def _page(conn: Connection, where: str, params: tuple[str, ...]) -> list[tuple[str, str]]:
    """One page of accounts (`account_id <where>`), in one read snapshot."""
    await conn.execute("BEGIN")
    try:
        counters = await conn.execute_fetchall(
            "SELECT m.account_id, m.user_id, m.tokens_used, m.tokens_held,"
            " m.period_seq = u.period_seq AS current FROM member_spending m"
            " JOIN usage_limits u ON u.account_id = m.account_id"
            f" WHERE m.account_id {where}",
            params,
        )
        charges = await conn.execute_fetchall(
            "SELECT t.account_id, t.user_id, SUM(t.tokens_used) FROM usage_limits u"
            " JOIN token_usage t ON t.account_id = u.account_id"
            " AND t.period_seq = u.period_seq AND t.status = 'charged'"
            f" WHERE u.account_id {where} AND t.user_id IS NOT NULL"
            " GROUP BY t.account_id, t.user_id",
            params,
        )
        pending = await conn.execute_fetchall(
            "SELECT account_id, user_id, SUM(amount) FROM holds WHERE status = 'pending'"
            f" AND account_id {where} AND user_id IS NOT NULL"
            " GROUP BY account_id, user_id",
            params,
        )
    finally:
        await conn.execute("COMMIT")
    return _breaches(counters, charges, pending)


def _breaches(counters: list[Any], charges: list[Any], pending: list[Any]) -> list[tuple[str, str]]:
    charged = {(r[0], r[1]): r[2] for r in charges}
    held = {(r[0], r[1]): r[2] for r in pending}
    found: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for account, user, used, holding, current in counters:
        key = (account, user)
        if current:
            seen.add(key)
            if used != charged.get(key, 0):
                found.append(
                    (
                        account,
                        f"member {user} tokens_used {used} != their charges this period"
                        f" ({charged.get(key, 0)})",
                    )
                )
        if holding != held.get(key, 0):
            found.append(
                (
                    account,
                    f"member {user} tokens_held {holding} != their pending holds"
                    f" ({held.get(key, 0)})",
                )
            )
    for (account, user), amount in sorted(charged.items()):
        if (account, user) not in seen:
            found.append(
                (
                    account,
                    f"member {user} has {amount} tokens of charges this period"
                    " but no spending counter for it",
                )
            )
    return found
