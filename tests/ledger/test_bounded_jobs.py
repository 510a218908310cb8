"""Whole-ledger jobs in bounded pieces: paged export, incremental and full verify."""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ledger import Ledger, ManualClock
from ledger import verify as verifier

ACCOUNTS = ["user:1", "user:2", "guild:3"]


@pytest.fixture
def database(db_path: Path) -> str:
    """SQLite only: these cases tamper with (or measure) the file itself."""
    return str(db_path)


async def _activity(ledger: Ledger, rounds: int) -> None:
    for n in range(rounds):
        account = ACCOUNTS[n % len(ACCOUNTS)]
        hold = await ledger.reserve(account, 500, "chat", user_id=n, model="gpt-5.4-mini")
        if n % 4 == 3:
            await ledger.release(hold, "the API failed")
        else:
            await ledger.commit(hold, 100 + n, details=f'with "quotes", commas\nand a newline {n}')
        if n % 5 == 0:
            await ledger.grant(account, 1_000 + n, "cli:op", "thanks")


def _tamper(db_path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


async def test_paged_export_equals_the_unpaged_one_byte_for_byte(ledger: Ledger) -> None:
    await _activity(ledger, 40)
    whole, paged = io.StringIO(), io.StringIO()
    seen: list[tuple[int, int]] = []

    rows = await ledger.export_csv(whole, page=10**9)
    paged_rows = await ledger.export_csv(paged, page=3, progress=lambda d, t: seen.append((d, t)))

    assert rows == paged_rows > 40
    assert paged.getvalue() == whole.getvalue()
    assert len(seen) == -(-rows // 3) and seen[-1][0] == seen[-1][1]  # page by page, to the end


async def test_export_stops_at_the_row_committed_last_when_it_started(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 6)
    before = await ledger.export_csv(io.StringIO())

    def append_meanwhile(done: int, total: int) -> None:  # a write between two pages
        _tamper(
            db_path,
            "INSERT INTO token_usage (account_id, operation_type, status, period_seq,"
            " created_at) VALUES ('user:1', 'avatar_upload', 'free', 1, '2026-01-01')",
        )

    assert await ledger.export_csv(io.StringIO(), page=2, progress=append_meanwhile) == before


async def test_incremental_verify_catches_a_breach_made_after_the_last_clean_run(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 30)
    assert await ledger.verify() == []  # the checkpoint: the first run walks everything
    await _activity(ledger, 9)
    assert await ledger.verify() == []  # from the checkpoint on

    # A charge logged without its counter (as a bug in a write path would leave it).
    _tamper(
        db_path,
        "INSERT INTO token_usage (account_id, operation_type, tokens_used, status, period_seq,"
        " created_at) VALUES ('user:2', 'chat', 77, 'charged', 1, '2026-01-01T00:00:00Z')",
    )
    found = await ledger.verify()
    assert [(v.account_id, "this period's charges" in v.message) for v in found] == [
        ("user:2", True)
    ]
    assert await ledger.verify() == found  # a dirty run records nothing: still found


async def test_incremental_verify_checks_every_account_s_current_counters(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 12)
    assert await ledger.verify() == []
    # Nothing appended since: the counters alone are wrong.
    _tamper(
        db_path,
        "UPDATE usage_limits SET bonus_tokens = bonus_tokens + 1 WHERE account_id = 'user:1'",
    )
    found = await ledger.verify()
    assert (
        len(found) == 1 and found[0].account_id == "user:1" and "bonus_tokens" in found[0].message
    )


async def test_incremental_verify_rechecks_the_holds_pending_at_the_last_clean_run(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 8)
    waiting = await ledger.reserve("user:1", 300, "chat")
    await _activity(ledger, 4)
    assert await ledger.verify() == []
    # Marked resolved behind the ledger's back: no audit row, counters untouched.
    _tamper(
        db_path,
        f"UPDATE holds SET status = 'released' WHERE hold_id = '{waiting.hold_id}'",
        "UPDATE usage_limits SET tokens_held = tokens_held - 300 WHERE account_id = 'user:1'",
    )
    found = await ledger.verify()
    assert [waiting.hold_id in v.message for v in found] == [True]


async def test_only_full_verify_finds_a_breach_in_rows_a_clean_run_already_summed(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 20)
    assert await ledger.verify() == []
    await _activity(ledger, 5)
    # Rewrite an old audit row (the table refuses it, so tampering drops its trigger).
    _tamper(
        db_path,
        "DROP TRIGGER token_usage_no_update",
        "UPDATE token_usage SET bonus_delta = bonus_delta - 5 WHERE id = 2",
    )
    assert await ledger.verify() == []  # the checkpoint already summed row 2: trusted

    found = await ledger.verify(full=True)
    assert len(found) == 1 and "bonus_tokens" in found[0].message


async def test_a_full_run_after_repairs_replaces_the_checkpoint(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 10)
    assert await ledger.verify(full=True) == []
    await _activity(ledger, 10)
    assert await ledger.verify(full=True) == []
    assert await ledger.verify() == []
    with closing(sqlite3.connect(db_path)) as conn:
        ((mode, through),) = conn.execute("SELECT mode, through_usage_id FROM verify_state")
        (top,) = conn.execute("SELECT MAX(id) FROM token_usage").fetchone()
    assert (mode, through) == ("incremental", top)


async def test_pieces_are_small_and_agree_with_one_walk(
    ledger: Ledger, clock: ManualClock, monkeypatch: object
) -> None:
    await _activity(ledger, 30)
    clock.advance(days=40)  # a new period for every account
    await _activity(ledger, 9)
    phases: list[str] = []
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verifier, "PAGE", 4)
        patch.setattr(verifier, "ACCOUNT_PAGE", 1)
        patch.setattr(verifier, "HOLD_PAGE", 2)
        assert await ledger.verify(full=True, progress=lambda p, d, t: phases.append(p)) == []
        await _activity(ledger, 5)
        assert await ledger.verify() == []
    assert {"audit log", "accounts", "holds"} <= set(phases)


async def test_incremental_verify_sees_a_held_counter_zeroed_under_a_pending_hold(
    ledger: Ledger, db_path: Path
) -> None:
    await _activity(ledger, 6)
    await ledger.reserve("guild:3", 250, "chat")
    assert await ledger.verify() == []
    assert await ledger.verify() == []  # nothing appended since: SQL settles most accounts
    _tamper(db_path, "UPDATE usage_limits SET tokens_held = 0 WHERE account_id = 'guild:3'")
    found = await ledger.verify()
    assert [(v.account_id, "tokens_held 0 != pending holds 250" in v.message) for v in found] == [
        ("guild:3", True)
    ]
    _tamper(db_path, "UPDATE usage_limits SET tokens_held = 250 WHERE account_id = 'guild:3'")
