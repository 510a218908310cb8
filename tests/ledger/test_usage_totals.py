"""Per-period usage counters (ledger/totals.py): written with each charge, equal to the
audit log's sums, read without the period's rows, and checked by `verify --full`."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ledger import Ledger, ManualClock
from ledger import verify as verifier
from ledger.schema import MIGRATIONS
from ledger.storage.sqlite import SqliteStore
from ledger.totals import KINDS


async def _spend(ledger: Ledger, clock: ManualClock) -> None:
    for n in range(12):
        account = "guild:1" if n % 3 else "guild:2"
        hold = await ledger.reserve(
            account,
            900,
            "chat" if n % 2 else "image",
            user_id=None if n == 4 else 10 + n % 4,
            agent=None if n % 5 == 0 else f"agent{n % 2}",
        )
        if n % 6 == 5:
            await ledger.release(hold, "failed")  # no charge: counts nowhere
        else:
            await ledger.commit(hold, 50 * n)
        if n % 4 == 3:
            clock.advance(hours=20)  # a new day, now and then


async def _from_log(ledger: Ledger, account: str, kind: str) -> list[tuple[str | None, int]]:
    """The old query: the period's charge rows summed whole."""
    seq = (
        await ledger.store.reader.execute_fetchall(
            "SELECT period_seq FROM usage_limits WHERE account_id = ?", (account,)
        )
    )[0][0]
    rows = await ledger.store.reader.execute_fetchall(
        f"SELECT {KINDS[kind]}, SUM(tokens_used) FROM token_usage WHERE account_id = ?"
        " AND period_seq = ? AND status = 'charged' GROUP BY 1",
        (account, seq),
    )
    order = (lambda r: r[0]) if kind == "day" else (lambda r: (-r[1], r[0]))
    empty = kind in {"member", "agent"}
    return sorted(((None if empty and r[0] == "" else r[0], int(r[1])) for r in rows), key=order)


async def test_usage_by_every_kind_equals_the_log_across_periods(
    ledger: Ledger, clock: ManualClock
) -> None:
    await _spend(ledger, clock)
    clock.advance(days=40)  # a fresh period: nothing used yet
    assert await ledger.usage_by("guild:1", "member") == []
    await _spend(ledger, clock)
    for account in ("guild:1", "guild:2"):
        for kind in KINDS:
            assert await ledger.usage_by(account, kind) == await _from_log(ledger, account, kind)
    by_operation = await ledger.usage_by_operation("guild:1")
    assert by_operation == dict(await _from_log(ledger, "guild:1", "operation"))
    assert sum(by_operation.values()) > 0
    assert (None, 0) in await ledger.usage_by("guild:2", "agent")  # n=0: no agent, 0 charged
    assert await ledger.verify(full=True) == []


async def test_a_refused_commit_counts_nothing(ledger: Ledger) -> None:
    hold = await ledger.reserve("guild:1", 500, "chat", user_id=1)
    await ledger.commit(hold, 300)
    again = await ledger.commit(hold, 300)  # a second resolution is refused
    assert not again.first
    assert await ledger.usage_by("guild:1", "member") == [("1", 300)]


async def test_full_verify_finds_a_counter_that_differs_from_the_log(
    ledger: Ledger, clock: ManualClock
) -> None:
    await _spend(ledger, clock)
    assert await ledger.verify(full=True) == []
    await ledger.store.write(
        lambda conn: conn.execute(
            "UPDATE usage_totals SET tokens = tokens + 7 WHERE account_id = 'guild:1'"
            " AND kind = 'operation' AND subject = 'chat'"
        )
    )
    await ledger.store.write(
        lambda conn: conn.execute(
            "DELETE FROM usage_totals WHERE account_id = 'guild:2' AND kind = 'day'"
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verifier, "ACCOUNT_PAGE", 1)  # one page per account
        found = await ledger.verify(full=True)
    messages = sorted((v.account_id, v.message.split(",")[1].strip()) for v in found)
    assert ("guild:1", "operation 'chat'") in messages
    assert any(a == "guild:2" and m.startswith("day") for a, m in messages), messages
    assert all("usage total" in v.message for v in found)


def test_the_migration_fills_the_counters_from_an_existing_log(db_path: Path) -> None:
    """A database made before migration 10: its counters come from its charge rows."""
    import asyncio

    async def build() -> None:
        store = await SqliteStore.open(db_path)
        await store.close()

    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for number, script in enumerate(MIGRATIONS[:9], start=1):
            conn.executescript(script)
            conn.execute(f"PRAGMA user_version={number}")
        conn.execute(
            "INSERT INTO usage_limits (account_id, tokens_limit, period_start, period_end,"
            " period_anchor, created_at, updated_at) VALUES ('guild:1', 10, 'a', 'b', 'a',"
            " 'a', 'a')"
        )
        conn.executemany(
            "INSERT INTO token_usage (account_id, user_id, operation_type, tokens_used, status,"
            " period_seq, created_at, agent) VALUES ('guild:1', ?, ?, ?, ?, 1, ?, ?)",
            [
                ("7", "chat", 10, "charged", "2026-01-02T03:00:00.000000Z", "Nova"),
                ("7", "chat", 5, "charged", "2026-01-03T03:00:00.000000Z", None),
                (None, "image", 3, "charged", "2026-01-03T04:00:00.000000Z", "Nova"),
                ("7", "chat", 99, "released", "2026-01-03T05:00:00.000000Z", None),
            ],
        )
    asyncio.run(build())
    with closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute(
            "SELECT kind, subject, tokens FROM usage_totals ORDER BY kind, subject"
        ).fetchall()
    assert rows == [
        ("agent", "", 5),
        ("agent", "Nova", 13),
        ("day", "2026-01-02", 10),
        ("day", "2026-01-03", 8),
        ("member", "", 3),
        ("member", "7", 15),
        ("operation", "chat", 15),
        ("operation", "image", 3),
    ]


async def test_usage_reads_a_counter_row_per_subject(ledger: Ledger, db_path: Path) -> None:
    if ledger.store.dialect != "sqlite":
        pytest.skip("the query plan is SQLite's")
    hold = await ledger.reserve("guild:1", 500, "chat", user_id=1)
    await ledger.commit(hold, 100)
    with closing(sqlite3.connect(db_path)) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT subject, tokens FROM usage_totals WHERE account_id = ?"
            " AND period_seq = ? AND kind = ? ORDER BY tokens DESC, subject",
            ("guild:1", 1, "operation"),
        ).fetchall()
    assert any("sqlite_autoindex_usage_totals" in row[-1] for row in plan), plan
    assert not any("token_usage" in row[-1] for row in plan), plan
