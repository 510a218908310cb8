"""`verify`: the ledger's invariants, checked in bounded pieces.

The invariants are those of ledger/ledger.py's docstring. They are sums over the audit
log, and the audit log is append-only, so what a clean run summed never changes: a run
records, in the ledger, the id it summed through and each account's sums (the
checkpoint), and the next run adds only the rows after it. By default verify is
incremental: every account's current counters, checked against the checkpoint plus the
rows appended since; the holds still pending at the last clean run and every hold made
since. `full=True` walks the whole log again and finds a breach anywhere, even one
written into rows the checkpoint already summed (which only tampering can do: the table
refuses updates and deletes).

The walk's end is `Store.committed()`, read before it: on PostgreSQL ids are not
handed out in commit order (a row with a lower id may commit after verify passed that
id), so the largest id visible is no bound; the store's fence is (see postgres.py).

Each piece runs in its own short read transaction, so a long verify never pins the
WAL (a reader's snapshot keeps every page written after it alive):
- the audit log in id ranges of PAGE rows, below the id read at the start (rows there
  are immutable, so they may be summed in any number of transactions);
- the accounts in keyset pages; each page reads its counters, the rows appended after
  the walk's end and its pending holds in one snapshot, so the comparison is exact;
- the holds in rowid ranges, each hold with its audit row in one snapshot.

Members' spending counters (ledger/members.py) are checked against their account's
current period and pending holds, a page of accounts per read: every account's with
`full`, and incrementally those of the accounts written since the last clean run (a
counter changed behind the ledger's back on an account idle since is for `--full`).

The usage counters (ledger/totals.py) are checked against the log with `full` only,
a page of accounts per read: each read sums the page's charge rows whole.

Archived holds (ledger/archive.py): a resolved hold older than its time to live may be
deleted once its audit row is at or below `holds_archived_through`; that audit row is
then the record of the hold (its id, status, charge and the amount held). The invariant
"each hold is resolved at most once, with exactly one audit row" reads: every hold row
that exists is pending with no audit row, or resolved with exactly one matching row; an
audit row naming a hold with no hold row is a breach unless that row is archived (id at
or below the watermark). Refusing a second resolution does not need the hold row: the
audit row's unique hold_id answers it (Ledger._earlier_resolution).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger import members, totals
from ledger.records import Violation
from ledger.storage import Committed, Connection, Row

PAGE = 50_000  # audit rows per read transaction
ACCOUNT_PAGE = 500
HOLD_PAGE = 5_000

# A subquery with a LIMIT is not flattened into its aggregate (SQLite; PostgreSQL keeps
# it too): its rows come from the id range, which is short, and never from a history
# index that the planner would otherwise walk whole to group by account.
_ALL = 2**62
_SUMMED = "account_id, period_seq, status, tokens_used, bonus_delta"
_SUMS = (
    "account_id, period_seq,"
    " SUM(CASE WHEN status = 'charged' THEN tokens_used + bonus_delta ELSE 0 END),"
    " SUM(bonus_delta)"
)

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class _Sums:
    """Per account: the allowance part of each period's charges, and the bonus changes."""

    charged: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    bonus: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class Checkpoint:
    through_usage_id: int  # audit rows up to here are summed in verified_accounts
    holds_from: int  # holds below this rowid were resolved and checked


@dataclass
class Outcome:
    violations: list[Violation]
    base: Checkpoint | None  # the checkpoint this run started from (None: full)
    reached: Checkpoint
    accounts: list[tuple[str, int, int, int]]  # (account, period_seq, charged, bonus) to store


async def last_checkpoint(conn: Connection) -> Checkpoint | None:
    rows = await conn.execute_fetchall(
        "SELECT through_usage_id, holds_from FROM verify_state WHERE id = 1"
    )
    return Checkpoint(rows[0][0], rows[0][1]) if rows else None


async def _archived_through(conn: Connection) -> int:
    rows = await conn.execute_fetchall(
        "SELECT value FROM ledger_state WHERE key = 'holds_archived_through'"
    )
    return int(rows[0][0]) if rows else 0


async def run(
    conn: Connection,
    committed: Committed,
    *,
    full: bool,
    progress: Progress | None = None,
    dialect: str = "sqlite",
) -> Outcome:
    """Check every invariant; `conn` is a reader in autocommit mode. `committed` bounds
    the walk (Store.committed, read before this run): a row below it never appears later,
    so what this run sums and records is never missing one."""
    base = None if full else await last_checkpoint(conn)
    start = base.through_usage_id if base else 0
    end = max(committed.usage_id, start)
    sums = await _sum_log(conn, start, end, progress)
    touched: set[str] | None = None  # full: every account
    if base is not None:  # the accounts written since the last clean run
        holders = await conn.execute_fetchall(
            "SELECT DISTINCT account_id FROM (SELECT account_id FROM holds WHERE rowid >= ?"
            f" LIMIT {_ALL}) AS h",
            (base.holds_from,),
        )
        touched = set(sums.bonus) | {r[0] for r in holders}
    found, accounts = await _accounts(conn, base, end, sums, touched, progress, dialect)
    holds_from, hold_breaches = await _holds(
        conn, base.holds_from if base else 0, committed.hold_rowid, progress
    )
    found += hold_breaches
    found += await _lost_holds(conn, start, end)
    found += [Violation(a, m) for a, m in await members.verify_in(conn, touched)]
    return Outcome(found, base, Checkpoint(end, holds_from), accounts)


async def _sum_log(conn: Connection, start: int, end: int, progress: Progress | None) -> _Sums:
    sums = _Sums()
    low = start
    while low < end:
        high = min(end, low + PAGE)
        rows = await conn.execute_fetchall(
            f"SELECT {_SUMS} FROM (SELECT {_SUMMED} FROM token_usage WHERE id > ? AND id <= ?"
            f" LIMIT {_ALL}) AS t GROUP BY account_id, period_seq",
            (low, high),
        )
        for account, seq, charged, bonus in rows:
            sums.charged[(account, seq)] += charged
            sums.bonus[account] += bonus
        low = high
        if progress:
            progress("audit log", low - start, end - start)
    return sums


# Incrementally, SQL passes over every account whose counters still equal what the last
# clean run summed, with nothing held and no row appended since: such an account is
# settled as it was, and the scan of 10^4 accounts stays in C. The rest go to Python.
def _unsettled(dialect: str) -> str:
    written = (  # the accounts written since, one JSON array parameter
        "SELECT json_array_elements_text(CAST(? AS json))"
        if dialect == "postgresql"
        else "SELECT value FROM json_each(?)"
    )
    return (
        "AND (v.account_id IS NULL OR u.period_seq != v.period_seq"
        " OR u.tokens_used != v.charged OR u.bonus_tokens != v.bonus OR u.tokens_held != 0"
        " OR u.tokens_limit < 0 OR u.tokens_used < 0 OR u.bonus_tokens < 0"
        f" OR u.account_id IN ({written}))"
    )


async def _accounts(
    conn: Connection,
    base: Checkpoint | None,
    end: int,
    sums: _Sums,
    touched: set[str] | None,
    progress: Progress | None,
    dialect: str,
) -> tuple[list[Violation], list[tuple[str, int, int, int]]]:
    found: list[Violation] = []
    stored: list[tuple[str, int, int, int]] = []
    total = (await conn.execute_fetchall("SELECT COUNT(*) FROM usage_limits"))[0][0]
    written = json.dumps(sorted(touched or ()))
    after, done = "", 0
    while True:
        await conn.execute("BEGIN")
        try:
            page = await conn.execute_fetchall(
                "SELECT u.account_id, u.tokens_limit, u.tokens_used, u.tokens_held,"
                " u.bonus_tokens, u.period_seq, v.period_seq AS v_seq,"
                " COALESCE(v.charged, 0) AS v_charged, COALESCE(v.bonus, 0) AS v_bonus,"
                " (SELECT COALESCE(SUM(h.amount), 0) FROM holds h"
                "   WHERE h.account_id = u.account_id AND h.status = 'pending') AS pending"
                " FROM usage_limits u LEFT JOIN verified_accounts v"
                f" ON v.account_id = u.account_id AND {'1 = 1' if base else '1 = 0'}"
                f" WHERE u.account_id > ? {'' if base is None else _unsettled(dialect)}"
                " ORDER BY u.account_id LIMIT ?",
                (after, *(() if base is None else (written,)), ACCOUNT_PAGE),
            )
            if not page:
                break
            # Rows appended since the walk's end, in this page's snapshot: by the id
            # range, which is short, never by the accounts' whole history.
            late = await conn.execute_fetchall(
                f"SELECT {_SUMS} FROM (SELECT {_SUMMED} FROM token_usage WHERE id > ?"
                f" LIMIT {_ALL}) AS t WHERE account_id >= ? AND account_id <= ?"
                " GROUP BY account_id, period_seq",
                (end, page[0]["account_id"], page[-1]["account_id"]),
            )
            if base is None:  # the usage counters, in the snapshot of their rows
                found += [
                    Violation(a, m)
                    for a, m in await totals.check_in(conn, [r["account_id"] for r in page])
                ]
        finally:
            await conn.execute("COMMIT")
        late_charged = {(r[0], r[1]): r[2] for r in late}
        late_bonus: dict[str, int] = defaultdict(int)
        for r in late:
            late_bonus[r[0]] += r[3]
        for r in page:
            a, seq = r["account_id"], r["period_seq"]
            # Through the walk's end: the checkpoint's sum if it counted this period.
            charged = sums.charged.get((a, seq), 0)
            if r["v_seq"] == seq:
                charged += r["v_charged"]
            bonus = r["v_bonus"] + sums.bonus.get(a, 0)
            if (r["v_seq"], r["v_charged"], r["v_bonus"]) != (seq, charged, bonus):
                stored.append((a, seq, charged, bonus))  # only what changed is rewritten
            found += _account_breaches(
                r, charged + late_charged.get((a, seq), 0), bonus + late_bonus.get(a, 0)
            )
        after = page[-1]["account_id"]
        done += len(page)
        if progress:
            progress("accounts", done, total)
    return found, stored


def _account_breaches(r: Row, charged: int, bonus: int) -> list[Violation]:
    a = r["account_id"]
    found = [
        Violation(a, f"{name} is negative ({r[name]})")
        for name in ("tokens_limit", "tokens_used", "tokens_held", "bonus_tokens")
        if r[name] < 0
    ]
    if r["tokens_used"] != charged:
        found.append(
            Violation(a, f"tokens_used {r['tokens_used']} != this period's charges {charged}")
        )
    if r["tokens_held"] != r["pending"]:
        found.append(
            Violation(a, f"tokens_held {r['tokens_held']} != pending holds {r['pending']}")
        )
    if r["bonus_tokens"] != bonus:
        found.append(
            Violation(a, f"bonus_tokens {r['bonus_tokens']} != sum of bonus changes {bonus}")
        )
    return found


async def _holds(
    conn: Connection, start: int, top: int, progress: Progress | None
) -> tuple[int, list[Violation]]:
    """Holds from rowid `start` through `top`; returns where the next run must start:
    the first hold seen pending (it may still change), or past the last one seen."""
    found: list[Violation] = []
    low, first_pending = start - 1, None
    while low < top:
        high = min(top, low + HOLD_PAGE)
        await conn.execute("BEGIN")
        try:
            pending = await conn.execute_fetchall(
                "SELECT MIN(rowid) FROM holds WHERE rowid > ? AND rowid <= ?"
                " AND status = 'pending'",
                (low, high),
            )
            breaches = await conn.execute_fetchall(
                """
                SELECT * FROM (
                  SELECT h.hold_id, h.account_id, h.status, h.charged, COUNT(t.id) AS entries,
                         COALESCE(SUM(t.tokens_used), 0) AS logged
                  FROM holds h LEFT JOIN token_usage t ON t.hold_id = h.hold_id
                  WHERE h.rowid > ? AND h.rowid <= ?
                  GROUP BY h.hold_id
                ) AS h  -- a subquery: PostgreSQL's HAVING cannot name the counts
                WHERE (h.status = 'pending' AND entries != 0)
                    OR (h.status != 'pending' AND entries != 1)
                    OR (h.status = 'committed' AND logged != h.charged)
                    OR (h.status != 'committed' AND logged != 0)
                """,
                (low, high),
            )
        finally:
            await conn.execute("COMMIT")
        if first_pending is None and pending[0][0] is not None:
            first_pending = pending[0][0]
        found += [
            Violation(
                h["account_id"],
                f"hold {h['hold_id']} ({h['status']}) has {h['entries']} audit entries"
                f" logging {h['logged']} tokens (charged {h['charged']})",
            )
            for h in breaches
        ]
        low = high
        if progress:
            progress("holds", low - start + 1, top - start + 1)
    return (first_pending if first_pending is not None else max(start, top + 1)), found


async def _lost_holds(conn: Connection, start: int, end: int) -> list[Violation]:
    """Audit rows of the walk naming a hold that has no row, above the archive's mark
    (read in the same snapshot: archiving may move it while verify runs)."""
    found: list[Violation] = []
    low = start
    while low < end:
        high = min(end, low + PAGE)
        await conn.execute("BEGIN")
        try:
            archived = await _archived_through(conn)
            rows = await conn.execute_fetchall(
                "SELECT t.account_id, t.hold_id FROM token_usage t"
                " WHERE t.id > ? AND t.id <= ? AND t.hold_id IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.hold_id = t.hold_id)",
                (max(low, archived), high),
            )
        finally:
            await conn.execute("COMMIT")
        found += [Violation(r[0], f"audit row of hold {r[1]} has no hold") for r in rows]
        low = high
    return found


async def record(conn: Connection, outcome: Outcome, now: str, mode: str) -> bool:
    """In a write transaction: store a clean run's checkpoint, unless another run stored
    one since this run started (compare and set, so two runs never mix their sums)."""
    if outcome.base is None:
        # A full run replaces whatever is there: its sums are complete on their own.
        await conn.execute("DELETE FROM verified_accounts")
    elif await last_checkpoint(conn) != outcome.base:
        return False
    await conn.executemany(
        "INSERT INTO verified_accounts (account_id, period_seq, charged, bonus)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
        " period_seq = excluded.period_seq, charged = excluded.charged, bonus = excluded.bonus",
        outcome.accounts,
    )
    await conn.execute(
        "INSERT INTO verify_state (id, through_usage_id, holds_from, mode, finished_at)"
        " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " through_usage_id = excluded.through_usage_id, holds_from = excluded.holds_from,"
        " mode = excluded.mode, finished_at = excluded.finished_at",
        (outcome.reached.through_usage_id, outcome.reached.holds_from, mode, now),
    )
    return True
