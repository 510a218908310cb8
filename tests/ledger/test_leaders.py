"""Several `run` processes (shards on several hosts) share one database: exactly one of
them leads a once-only job (syncing the slash commands), on both stores."""

from __future__ import annotations

import asyncio

from ledger import Ledger, ManualClock


async def test_two_workers_on_one_database_sync_the_commands_once(
    ledger: Ledger, database: str, clock: ManualClock
) -> None:
    other = await Ledger.open(database, clock=clock, lease_seconds=30)
    try:
        first, second = await asyncio.gather(ledger.lead("commands"), other.lead("commands"))
        assert sorted([first, second]) == [False, True]  # one leader, whoever came first
        leader, follower = (ledger, other) if first else (other, ledger)

        clock.advance(seconds=20)
        assert await leader.lead("commands")  # renewed within its lease
        clock.advance(seconds=20)
        assert not await follower.lead("commands")  # the renewal moved the lease on

        clock.advance(seconds=31)  # the leader stopped renewing (a killed process)
        assert await follower.lead("commands")
        assert not await leader.lead("commands")
    finally:
        await other.close()


async def test_a_leader_that_closes_hands_the_role_on_at_once(
    ledger: Ledger, database: str, clock: ManualClock
) -> None:
    other = await Ledger.open(database, clock=clock)
    try:
        assert await other.lead("commands")
        assert not await ledger.lead("commands")
    finally:
        await other.close()
    assert await ledger.lead("commands")  # no lease to wait for
