"""Monthly periods: stepped from the anchor, rolled over lazily and exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ledger import Ledger, ManualClock
from tests.stores import query

ACCOUNT = "guild:7"


def at(year: int, month: int, day: int, hour: int = 12) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


async def _resets(database: str) -> list[tuple[Any, ...]]:
    return await query(
        database,
        "SELECT old_value, new_value FROM journal WHERE account_id = ?"
        " AND action = 'period_reset' ORDER BY id",
        (ACCOUNT,),
    )


async def _spend(ledger: Ledger, amount: int) -> None:
    hold = await ledger.reserve(ACCOUNT, amount, "chat")
    await ledger.commit(hold, amount)


async def test_the_31st_steps_to_feb_29_then_mar_31(database: str, clock: ManualClock) -> None:
    clock.set(at(2028, 1, 31))
    async with await Ledger.open(database, clock=clock) as ledger:
        await _spend(ledger, 1_000)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.period_start, balance.period_end) == (at(2028, 1, 31), at(2028, 2, 29))

        clock.set(at(2028, 2, 29) - timedelta(microseconds=1))
        await _spend(ledger, 1_000)  # still January's period
        assert (await ledger.balance(ACCOUNT)).tokens_used == 2_000
        assert await _resets(database) == []

        clock.set(at(2028, 2, 29))  # the boundary itself belongs to the new period
        await _spend(ledger, 3_000)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.period_start, balance.period_end) == (at(2028, 2, 29), at(2028, 3, 31))
        assert balance.tokens_used == 3_000

        clock.set(at(2028, 3, 31, 13))
        await _spend(ledger, 500)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.period_start, balance.period_end) == (at(2028, 3, 31), at(2028, 4, 30))
        assert balance.tokens_used == 500
        assert len(await _resets(database)) == 2
        assert await ledger.verify() == []


async def test_a_gap_of_months_lands_in_the_right_period_with_one_reset(
    database: str, clock: ManualClock
) -> None:
    clock.set(at(2027, 1, 31))
    async with await Ledger.open(database, clock=clock) as ledger:
        await _spend(ledger, 40_000)

        clock.set(at(2027, 9, 15))
        # A read shows the period the next write will open, without writing.
        shown = await ledger.balance(ACCOUNT)
        assert (shown.period_start, shown.period_end) == (at(2027, 8, 31), at(2027, 9, 30))
        assert shown.tokens_used == 0
        assert await _resets(database) == []

        await _spend(ledger, 1_000)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.period_start, balance.period_end) == (at(2027, 8, 31), at(2027, 9, 30))
        assert balance.tokens_used == 1_000
        resets = await _resets(database)
        assert len(resets) == 1
        assert resets[0][1].startswith("2027-09-30T12:00:00")
        assert await ledger.verify() == []


async def test_exactly_one_reset_per_boundary(database: str, clock: ManualClock) -> None:
    clock.set(at(2026, 5, 10))
    async with await Ledger.open(database, clock=clock) as ledger:
        await _spend(ledger, 10_000)
        for month in (6, 7, 8):
            clock.set(at(2026, month, 10, 12) + timedelta(hours=1))
            await _spend(ledger, 1_000)  # rolls over
            await ledger.grant(ACCOUNT, 5, "cli:op", "same period")  # must not reset again
            await _spend(ledger, 2_000)  # neither may this
            clock.advance(days=3)
            await ledger.record(ACCOUNT, "avatar_upload")
            balance = await ledger.balance(ACCOUNT)
            assert balance.tokens_used == 3_000
            assert balance.period_start == at(2026, month, 10)
        assert len(await _resets(database)) == 3
        assert await ledger.verify() == []


async def test_bonus_and_held_tokens_are_kept_across_a_rollover(
    database: str, clock: ManualClock
) -> None:
    clock.set(at(2026, 3, 1))
    async with await Ledger.open(database, clock=clock, hold_ttl_seconds=10**7) as ledger:
        await ledger.grant(ACCOUNT, 30_000, "cli:op", "welcome")
        await _spend(ledger, 260_000)  # allowance gone, 10,000 of the bonus spent
        pending = await ledger.reserve(ACCOUNT, 15_000, "chat")
        before = await ledger.balance(ACCOUNT)
        assert (before.tokens_used, before.bonus_tokens, before.tokens_held) == (
            250_000,
            20_000,
            15_000,
        )
        assert before.available == 5_000

        clock.set(at(2026, 4, 2))
        await ledger.grant(ACCOUNT, 1, "cli:op", "touch")  # the rollover happens here
        after = await ledger.balance(ACCOUNT)
        assert (after.tokens_used, after.bonus_tokens, after.tokens_held) == (0, 20_001, 15_000)
        assert after.available == 250_000 - 15_000 + 20_001

        # The hold made last period is charged to the new one, on the allowance.
        result = await ledger.commit(pending, 12_000)
        assert result.first
        final = await ledger.balance(ACCOUNT)
        assert (final.tokens_used, final.bonus_tokens, final.tokens_held) == (12_000, 20_001, 0)
        assert len(await _resets(database)) == 1
        assert await ledger.verify() == []


async def test_plan_change_with_period_end_follows_the_billing_cycle(
    database: str, clock: ManualClock
) -> None:
    clock.set(at(2026, 1, 20))
    async with await Ledger.open(database, clock=clock) as ledger:
        await _spend(ledger, 100_000)
        renews = at(2026, 2, 5, 8)
        balance = await ledger.set_plan(ACCOUNT, "pro", renews, actor="billing", reason="paid")
        assert (balance.plan_type, balance.tokens_limit, balance.tokens_used) == (
            "pro",
            10_000_000,
            0,
        )
        assert (balance.period_start, balance.period_end) == (at(2026, 1, 20), renews)
        assert await ledger.balance(ACCOUNT) == balance

        clock.set(at(2026, 3, 6))
        await _spend(ledger, 7)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.period_start, balance.period_end) == (at(2026, 3, 5, 8), at(2026, 4, 5, 8))
        assert balance.tokens_used == 7

        # Without a period end, the period and its usage are kept; only the allowance moves.
        down = await ledger.set_plan(ACCOUNT, "free", actor="billing", reason="cancelled")
        assert (down.plan_type, down.tokens_limit, down.tokens_used) == ("free", 250_000, 7)
        assert down.period_end == at(2026, 4, 5, 8)
        assert await ledger.verify() == []
