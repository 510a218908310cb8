"""Low-balance alerts, on both stores: each threshold (20% left, then 0%) is raised exactly
once per period, however many ledgers (processes) charge at once, and a restart does not
raise it again; the next period starts afresh. (Two real OS processes on SQLite:
tests/ledger/test_caps_processes.py.)"""

from __future__ import annotations

import asyncio

from ledger import BalanceAlert, InsufficientTokens, Ledger, ManualClock

ACCOUNT = "guild:3"
STEP = 10_000  # the free plan's 250,000 is 25 steps; 20% left is 50,000


async def _spend(ledger: Ledger, user: int) -> tuple[BalanceAlert, ...]:
    """One paid call of STEP tokens; the alerts it raised (a refusal may raise 0%)."""
    try:
        hold = await ledger.reserve(ACCOUNT, STEP, "chat", user_id=user)
    except InsufficientTokens:
        return await ledger.note_refusal(ACCOUNT)
    return (await ledger.commit(hold, STEP)).alerts


async def _recorded(ledger: Ledger) -> list[tuple[int, int]]:
    rows = await ledger.store.reader.execute_fetchall(
        "SELECT period_seq, threshold FROM balance_alerts WHERE account_id = ?"
        " ORDER BY period_seq, threshold DESC",
        (ACCOUNT,),
    )
    return [(int(r[0]), int(r[1])) for r in rows]


async def test_each_threshold_is_raised_once_by_two_ledgers_and_not_after_a_restart(
    ledger: Ledger, database: str, clock: ManualClock
) -> None:
    other = await Ledger.open(database, clock=clock)
    try:
        # 30 calls from each ledger at once, 60 in all: the pool pays for 25.
        calls = [_spend(ledger if n % 2 else other, n % 7) for n in range(60)]
        raised = [a for alerts in await asyncio.gather(*calls) for a in alerts]
    finally:
        await other.close()
    assert sorted(a.threshold for a in raised) == [0, 20]
    twenty = next(a for a in raised if a.threshold == 20)
    assert twenty.remaining * 100 <= 20 * twenty.tokens_limit
    assert (await ledger.balance(ACCOUNT)).tokens_used == 250_000

    # A restart (a new ledger on the same database): refusals raise nothing more.
    async with await Ledger.open(database, clock=clock) as restarted:
        assert [await _spend(restarted, 1) for _ in range(3)] == [(), (), ()]
    periods = await _recorded(ledger)
    assert [t for _, t in periods] == [20, 0]

    # The next period: the allowance is back, and 20% is raised once again.
    clock.set((await ledger.balance(ACCOUNT)).period_end)
    again = [a for _ in range(21) for a in await _spend(ledger, 2)]
    assert [a.threshold for a in again] == [20]
    seqs = [seq for seq, _ in await _recorded(ledger)]
    assert len(set(seqs)) == 2 and seqs[-1] > seqs[0]
    assert await ledger.verify() == []
