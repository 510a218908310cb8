"""Holds are resolved exactly once; charges draw on the allowance, then on the bonus."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import (
    HoldNotFound,
    InsufficientTokens,
    InvalidAccount,
    InvalidAmount,
    Ledger,
    ManualClock,
)

ACCOUNT = "user:42"


async def _hold_rows(ledger: Ledger) -> list[tuple[str, str, int | None]]:
    rows = await ledger.store.reader.execute_fetchall(
        "SELECT hold_id, status, charged FROM holds ORDER BY rowid"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def _usage_rows_for(ledger: Ledger, hold_id: str) -> int:
    rows = await ledger.store.reader.execute_fetchall(
        "SELECT COUNT(*) FROM token_usage WHERE hold_id = ?", (hold_id,)
    )
    return int(rows[0][0])


# ---- exactly-once resolution ----------------------------------------------------------


async def test_double_commit_returns_the_first_outcome_and_changes_nothing(
    ledger: Ledger, db_path: Path
) -> None:
    hold = await ledger.reserve(ACCOUNT, 10_000, "chat", user_id=1, model="gpt-5.4-mini")
    first = await ledger.commit(hold, 7_000)
    assert first.first and first.status == "committed" and first.charged == 7_000
    after_first = await ledger.balance(ACCOUNT)

    second = await ledger.commit(hold, 9_999)

    assert not second.first
    assert (second.status, second.charged, second.excess) == ("committed", 7_000, 0)
    assert second.available == first.available
    assert await ledger.balance(ACCOUNT) == after_first
    assert after_first.tokens_used == 7_000 and after_first.tokens_held == 0
    assert await _usage_rows_for(ledger, hold.hold_id) == 1
    assert await ledger.verify() == []


async def test_commit_after_release_charges_nothing(ledger: Ledger, db_path: Path) -> None:
    hold = await ledger.reserve(ACCOUNT, 10_000, "chat")
    released = await ledger.release(hold, "the API failed")
    assert released.first and released.status == "released" and released.charged == 0

    late = await ledger.commit(hold, 10_000)

    assert not late.first
    assert (late.status, late.charged) == ("released", 0)
    balance = await ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.tokens_held, balance.available) == (0, 0, 250_000)
    assert await _usage_rows_for(ledger, hold.hold_id) == 1
    assert await ledger.verify() == []


async def test_release_after_commit_keeps_the_charge(ledger: Ledger) -> None:
    hold = await ledger.reserve(ACCOUNT, 10_000, "chat")
    await ledger.commit(hold.hold_id, 4_000)

    late = await ledger.release(hold.hold_id)

    assert not late.first
    assert (late.status, late.charged) == ("committed", 4_000)
    balance = await ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.tokens_held) == (4_000, 0)
    assert await ledger.verify() == []


async def test_a_commit_after_expiry_is_charged_once_and_a_release_changes_nothing(
    ledger: Ledger, clock: ManualClock, db_path: Path
) -> None:
    """Issue 10, finding 1: work that outlived its hold was stored and charged 0. The work
    was done and is delivered, so its commit charges the actual cost, on a row of its own
    that names the expired hold; the hold keeps its one 'expired' row."""
    hold = await ledger.reserve(ACCOUNT, 10_000, "chat")
    kept = await ledger.reserve(ACCOUNT, 1_000, "chat")
    clock.advance(seconds=899)
    assert (await ledger.sweep()).expired == 0  # not yet past the time to live
    fresh = await ledger.reserve(ACCOUNT, 2_000, "chat")  # made 899 s later
    await ledger.commit(kept, 1_000)
    clock.advance(seconds=2)

    report = await ledger.sweep()

    assert (report.expired, report.orphaned, report.tokens_freed) == (1, 0, 10_000)
    committed = await ledger.commit(hold, 12_000)  # more than was held: charged in full
    assert committed.first and (committed.status, committed.charged) == ("committed", 12_000)
    for late in (await ledger.commit(hold, 12_000), await ledger.release(hold)):
        assert not late.first
    balance = await ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.tokens_held) == (13_000, 2_000)
    statuses = {hold_id: status for hold_id, status, _ in await _hold_rows(ledger)}
    assert statuses == {
        hold.hold_id: "expired",
        kept.hold_id: "committed",
        fresh.hold_id: "pending",
    }
    (entry,) = [e for e in await ledger.history(ACCOUNT) if e.tokens_used == 12_000]
    assert entry.status == "charged" and entry.hold_id is None
    assert entry.details == "charged after its hold expired (time to live passed)"
    late_rows = [
        (r[0], r[1])
        for r in await ledger.store.reader.execute_fetchall(
            "SELECT late_hold_id, tokens_used FROM token_usage WHERE late_hold_id IS NOT NULL"
        )
    ]
    assert late_rows == [(hold.hold_id, 12_000)]
    assert await ledger.verify() == []


async def test_unknown_hold_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(HoldNotFound):
        await ledger.commit("no-such-hold", 1)
    with pytest.raises(HoldNotFound):
        await ledger.release("no-such-hold")


async def test_refused_reserve_changes_nothing(ledger: Ledger) -> None:
    await ledger.reserve(ACCOUNT, 249_000, "chat")
    before = await ledger.balance(ACCOUNT)

    with pytest.raises(InsufficientTokens) as refused:
        await ledger.reserve(ACCOUNT, 1_001, "chat")

    assert (refused.value.needed, refused.value.available, refused.value.plan) == (
        1_001,
        1_000,
        "free",
    )
    assert await ledger.balance(ACCOUNT) == before
    await ledger.reserve(ACCOUNT, 1_000, "chat")  # exactly what is left is fine
    assert (await ledger.balance(ACCOUNT)).available == 0
    assert await ledger.verify() == []


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "10"])
async def test_reserve_rejects_bad_amounts(ledger: Ledger, amount: object) -> None:
    with pytest.raises(InvalidAmount):
        await ledger.reserve(ACCOUNT, amount, "chat")  # type: ignore[arg-type]


@pytest.mark.parametrize("account", ["42", "user:", "user:abc", "channel:1", " user:1"])
async def test_reserve_rejects_bad_account_ids(ledger: Ledger, account: str) -> None:
    with pytest.raises(InvalidAccount):
        await ledger.reserve(account, 1, "chat")


# ---- draw order, revokes, over-hold commits ---------------------------------------------


async def test_a_charge_draws_on_the_allowance_first_then_the_bonus(
    ledger: Ledger, db_path: Path
) -> None:
    await ledger.grant(ACCOUNT, 10_000, "cli:op", "a thank-you")
    first = await ledger.reserve(ACCOUNT, 245_000, "chat")
    await ledger.commit(first, 245_000)
    balance = await ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.bonus_tokens, balance.available) == (
        245_000,
        10_000,
        15_000,
    )

    spanning = await ledger.reserve(ACCOUNT, 8_000, "chat")
    result = await ledger.commit(spanning, 8_000)

    # 5,000 from what is left of the allowance, 3,000 from the bonus.
    balance = await ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.bonus_tokens) == (250_000, 7_000)
    assert balance.available == result.available == 7_000
    entry = (await ledger.history(ACCOUNT, limit=1))[0]
    assert (entry.hold_id, entry.tokens_used, entry.bonus_delta) == (
        spanning.hold_id,
        8_000,
        -3_000,
    )
    assert await ledger.verify() == []


async def test_revoke_never_takes_the_bonus_below_zero(ledger: Ledger) -> None:
    await ledger.grant(ACCOUNT, 5_000, "cli:op", "promo")
    hold = await ledger.reserve(ACCOUNT, 252_000, "chat")
    await ledger.commit(hold, 252_000)  # 2,000 of the bonus spent
    assert (await ledger.balance(ACCOUNT)).bonus_tokens == 3_000

    taken = await ledger.revoke(ACCOUNT, 10_000, "cli:op", "promo ended")

    assert (taken.requested, taken.applied, taken.bonus_tokens, taken.available) == (
        10_000,
        3_000,
        0,
        0,
    )
    again = await ledger.revoke(ACCOUNT, 1, "cli:op", "nothing left")
    assert (again.applied, again.bonus_tokens) == (0, 0)
    balance = await ledger.balance(ACCOUNT)
    assert (balance.bonus_tokens, balance.available) == (0, 0)
    assert await ledger.verify() == []


async def test_grant_and_revoke_respect_the_maximum(ledger: Ledger) -> None:
    with pytest.raises(InvalidAmount):
        await ledger.grant(ACCOUNT, 101, "cli:op", "too much", maximum=100)
    with pytest.raises(InvalidAmount):
        await ledger.revoke(ACCOUNT, 0, "cli:op", "nothing")
    assert (await ledger.grant(ACCOUNT, 100, "cli:op", "ok", maximum=100)).bonus_tokens == 100


async def test_commit_above_the_hold_is_charged_in_full(ledger: Ledger, db_path: Path) -> None:
    await ledger.grant(ACCOUNT, 1_000, "cli:op", "small bonus")
    hold = await ledger.reserve(ACCOUNT, 5_000, "chat")
    other = await ledger.reserve(ACCOUNT, 2_000, "chat")

    result = await ledger.commit(hold, 260_000, "long answer")

    assert result.first and result.charged == 260_000
    assert result.excess == 255_000
    assert result.available == 0
    balance = await ledger.balance(ACCOUNT)
    # The allowance covers 250,000, the bonus 1,000; the remaining 9,000 overruns it.
    assert (balance.tokens_used, balance.bonus_tokens, balance.tokens_held) == (259_000, 0, 2_000)
    assert balance.available == 0
    entry = (await ledger.history(ACCOUNT, limit=1))[0]
    assert entry.tokens_used == 260_000 and entry.bonus_delta == -1_000
    assert entry.details is not None and "exceeded the hold by 255000" in entry.details
    assert "long answer" in entry.details
    with pytest.raises(InsufficientTokens) as refused:
        await ledger.reserve(ACCOUNT, 1, "chat")
    assert refused.value.available == 0
    await ledger.release(other)
    assert (await ledger.balance(ACCOUNT)).available == 0
    assert await ledger.verify() == []


async def test_a_repeat_after_the_period_ended_reports_the_available_balance_shows(
    ledger: Ledger, clock: ManualClock
) -> None:
    hold = await ledger.reserve(ACCOUNT, 1_000, "chat")
    await ledger.commit(hold, 1_000)
    clock.set((await ledger.balance(ACCOUNT)).period_end)  # ended, not yet rolled over

    again = await ledger.commit(hold, 1_000)

    assert not again.first
    assert again.available == (await ledger.balance(ACCOUNT)).available == 250_000
