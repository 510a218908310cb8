"""Caps on members' spending inside a server's pool: checked in the reserve's transaction,
most specific first, reset with the period, journaled, and checked by verify(). On both
stores (tests/conftest.py's `database`), but for the migration case, which builds an old
SQLite file by hand."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ledger import (
    Hold,
    InsufficientTokens,
    InvalidAccount,
    Ledger,
    ManualClock,
    MemberCapReached,
)

ACCOUNT = "guild:1"


async def test_50_concurrent_reserves_of_one_member_admit_exactly_the_cap(ledger: Ledger) -> None:
    await ledger.set_cap(ACCOUNT, "default", "", 12_000, actor="user:9", reason="fair share")
    mine = [ledger.reserve(ACCOUNT, 1_000, "chat", user_id=5) for _ in range(50)]
    others = [ledger.reserve(ACCOUNT, 1_000, "chat", user_id=100 + n) for n in range(10)]

    results = await asyncio.gather(*mine, *others, return_exceptions=True)

    member = results[:50]
    admitted = [r for r in member if isinstance(r, Hold)]
    refused = [r for r in member if isinstance(r, MemberCapReached)]
    assert (len(admitted), len(refused)) == (12, 38)
    assert all(r.cap == 12_000 and r.scope == "default" for r in refused)
    # Everyone else still spends from the pool while the member is at their cap.
    assert all(isinstance(r, Hold) for r in results[50:])
    balance = await ledger.balance(ACCOUNT)
    assert balance.tokens_held == 22_000
    for hold in admitted:
        await ledger.commit(hold, 1_000)
    spending = await ledger.member_spending(ACCOUNT, 5)
    assert (spending.tokens_used, spending.tokens_held, spending.remaining) == (12_000, 0, 0)
    assert await ledger.verify() == []


async def test_a_member_refused_by_the_pool_keeps_no_hold_on_their_counter(ledger: Ledger) -> None:
    await ledger.set_cap(ACCOUNT, "member", 5, 900_000, actor="user:9", reason="big")
    with pytest.raises(InsufficientTokens):
        await ledger.reserve(ACCOUNT, 300_000, "chat", user_id=5)
    spending = await ledger.member_spending(ACCOUNT, 5)
    assert (spending.tokens_used, spending.tokens_held) == (0, 0)
    assert await ledger.verify() == []


async def test_member_then_highest_role_then_default(ledger: Ledger) -> None:
    for scope, subject, tokens in (
        ("default", "", 1_000),
        ("role", 70, 3_000),
        ("role", 80, 2_000),
        ("member", 5, 4_000),
    ):
        await ledger.set_cap(ACCOUNT, scope, subject, tokens, actor="user:9", reason="setup")

    async def cap_of(user: int, roles: list[int]) -> tuple[str, int] | None:
        spending = await ledger.member_spending(ACCOUNT, user, roles)
        return None if spending.cap is None else (spending.cap.scope, spending.cap.tokens)

    assert await cap_of(5, [70, 80]) == ("member", 4_000)
    assert await cap_of(6, [80, 70]) == ("role", 2_000)  # 80 ranks higher for this member
    assert await cap_of(6, [70, 80]) == ("role", 3_000)
    assert await cap_of(6, [99]) == ("default", 1_000)
    await ledger.clear_cap(ACCOUNT, "default", "", actor="user:9", reason="no default")
    assert await cap_of(6, [99]) is None


async def test_a_role_given_mid_period_applies_to_what_was_already_spent(ledger: Ledger) -> None:
    await ledger.set_cap(ACCOUNT, "default", "", 2_000, actor="user:9", reason="x")
    await ledger.set_cap(ACCOUNT, "role", 70, 5_000, actor="user:9", reason="x")
    hold = await ledger.reserve(ACCOUNT, 2_000, "chat", user_id=6)
    await ledger.commit(hold, 2_000)
    with pytest.raises(MemberCapReached) as refused:
        await ledger.reserve(ACCOUNT, 1_000, "chat", user_id=6)
    assert (refused.value.used, refused.value.cap) == (2_000, 2_000)

    # Promoted: the role's cap counts this period's earlier spending too.
    hold = await ledger.reserve(ACCOUNT, 3_000, "chat", user_id=6, roles=[70])
    await ledger.commit(hold, 3_000)
    with pytest.raises(MemberCapReached) as refused:
        await ledger.reserve(ACCOUNT, 1, "chat", user_id=6, roles=[70])
    assert (refused.value.scope, refused.value.subject_id, refused.value.used) == (
        "role",
        "70",
        5_000,
    )
    # The role taken away again: the default applies, and they are over it.
    with pytest.raises(MemberCapReached) as refused:
        await ledger.reserve(ACCOUNT, 1, "chat", user_id=6)
    assert refused.value.scope == "default"
    assert await ledger.verify() == []


async def test_caps_reset_with_the_period(ledger: Ledger, clock: ManualClock) -> None:
    await ledger.set_cap(ACCOUNT, "default", "", 3_000, actor="user:9", reason="x")
    hold = await ledger.reserve(ACCOUNT, 3_000, "chat", user_id=5)
    await ledger.commit(hold, 3_000)
    with pytest.raises(MemberCapReached) as refused:
        await ledger.reserve(ACCOUNT, 1, "chat", user_id=5)
    resets = (await ledger.balance(ACCOUNT)).period_end
    assert refused.value.resets_at == resets

    clock.set(resets)
    assert (await ledger.member_spending(ACCOUNT, 5)).tokens_used == 0  # as the next write sees it
    hold = await ledger.reserve(ACCOUNT, 3_000, "chat", user_id=5)
    await ledger.commit(hold, 2_500)
    spending = await ledger.member_spending(ACCOUNT, 5)
    assert (spending.tokens_used, spending.remaining) == (2_500, 500)
    assert await ledger.verify() == []


async def test_a_hold_across_the_rollover_is_charged_to_the_new_period(
    ledger: Ledger, clock: ManualClock
) -> None:
    await ledger.set_cap(ACCOUNT, "default", "", 3_000, actor="user:9", reason="x")
    hold = await ledger.reserve(ACCOUNT, 2_000, "chat", user_id=5)
    clock.set((await ledger.balance(ACCOUNT)).period_end)
    await ledger.commit(hold, 1_500)
    spending = await ledger.member_spending(ACCOUNT, 5)
    assert (spending.tokens_used, spending.tokens_held) == (1_500, 0)
    assert await ledger.verify() == []


async def test_dms_have_no_caps(ledger: Ledger) -> None:
    with pytest.raises(InvalidAccount):
        await ledger.set_cap("user:5", "default", "", 10, actor="user:5", reason="x")
    hold = await ledger.reserve("user:5", 50_000, "chat", user_id=5, roles=[70])
    await ledger.commit(hold, 50_000)
    assert (await ledger.member_spending("user:5", 5)).cap is None
    assert await ledger.verify() == []


async def test_every_cap_change_is_journaled(ledger: Ledger) -> None:
    assert await ledger.set_cap(ACCOUNT, "member", 5, 100, actor="user:9", reason="a") is None
    assert await ledger.set_cap(ACCOUNT, "member", 5, 200, actor="user:8", reason="b") == 100
    assert await ledger.clear_cap(ACCOUNT, "member", 5, actor="user:9", reason="c") == 200
    assert await ledger.clear_cap(ACCOUNT, "member", 5, actor="user:9", reason="d") is None
    found = await ledger.store.reader.execute_fetchall(
        "SELECT action, old_value, new_value, actor, reason FROM journal"
        " WHERE account_id = ? ORDER BY id",
        (ACCOUNT,),
    )
    rows = [tuple(row) for row in found]
    assert rows == [
        ("cap_member:5", None, "100", "user:9", "a"),
        ("cap_member:5", "100", "200", "user:8", "b"),
        ("cap_member:5", "200", None, "user:9", "c"),
    ]
    assert await ledger.caps(ACCOUNT) == []


async def _tamper(ledger: Ledger, sql: str) -> None:
    """Change a row behind the ledger's back, as a hand-edit of the database would."""

    async def op(conn: Any) -> None:
        await conn.execute(sql)

    await ledger.store.write(op)


async def test_verify_catches_a_tampered_member_counter(ledger: Ledger) -> None:
    hold = await ledger.reserve(ACCOUNT, 1_000, "chat", user_id=5)
    await ledger.commit(hold, 800)
    await ledger.reserve(ACCOUNT, 300, "chat", user_id=5)
    assert await ledger.verify() == []
    await _tamper(ledger, "UPDATE member_spending SET tokens_used = 700, tokens_held = 0")
    problems = [str(v) for v in await ledger.verify()]
    assert problems == [
        "guild:1: member 5 tokens_used 700 != their charges this period (800)",
        "guild:1: member 5 tokens_held 0 != their pending holds (300)",
    ]
    await _tamper(ledger, "DELETE FROM member_spending")
    problems = [str(v) for v in await ledger.verify()]
    assert problems == [
        "guild:1: member 5 has 800 tokens of charges this period but no spending counter for it"
    ]


async def test_the_migration_counts_what_members_spent_before_it(
    db_path: Path, clock: ManualClock
) -> None:
    from ledger.schema import MIGRATIONS

    with closing(sqlite3.connect(db_path)) as conn, conn:
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 2")
        now = "2026-01-01T00:00:00.000000Z"
        conn.execute(
            "INSERT INTO usage_limits (account_id, tokens_limit, tokens_used, tokens_held,"
            " period_start, period_end, period_anchor, period_seq, created_at, updated_at)"
            " VALUES ('guild:1', 250000, 700, 400, ?, '2026-02-01T00:00:00.000000Z', ?, 2, ?, ?)",
            (now, now, now, now),
        )
        conn.execute(
            "INSERT INTO holds (hold_id, account_id, user_id, operation_type, amount,"
            " instance_id, created_at, expires_at) VALUES ('h', 'guild:1', '5', 'chat', 400,"
            " 'gone', ?, ?)",
            (now, now),
        )
        for seq, tokens in ((1, 9_000), (2, 300), (2, 400)):
            conn.execute(
                "INSERT INTO token_usage (account_id, user_id, operation_type, tokens_used,"
                " status, period_seq, created_at) VALUES ('guild:1', '5', 'chat', ?,"
                " 'charged', ?, ?)",
                (tokens, seq, now),
            )
    async with await Ledger.open(db_path, clock=clock) as ledger:
        spending = await ledger.member_spending(ACCOUNT, 5)
        assert (spending.tokens_used, spending.tokens_held) == (700, 400)
        assert await ledger.verify() == []
