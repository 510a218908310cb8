"""Many callers racing for the last tokens: the conditional reserve admits exactly enough."""

from __future__ import annotations

import asyncio

from ledger import Hold, InsufficientTokens, Ledger

ACCOUNT = "guild:1"


async def test_200_concurrent_reserves_admit_exactly_50(ledger: Ledger) -> None:
    assert (await ledger.balance(ACCOUNT)).available == 250_000

    results = await asyncio.gather(
        *(ledger.reserve(ACCOUNT, 5_000, "chat", user_id=n) for n in range(200)),
        return_exceptions=True,
    )

    admitted = [r for r in results if isinstance(r, Hold)]
    refused = [r for r in results if isinstance(r, InsufficientTokens)]
    assert len(admitted) == 50
    assert len(refused) == 150
    assert len({h.hold_id for h in admitted}) == 50
    assert all(r.needed == 5_000 and r.available < 5_000 for r in refused)
    balance = await ledger.balance(ACCOUNT)
    assert (balance.tokens_held, balance.tokens_used, balance.available) == (250_000, 0, 0)
    assert await ledger.verify() == []


async def test_concurrent_commits_and_releases_settle_every_hold_once(ledger: Ledger) -> None:
    holds = await asyncio.gather(*(ledger.reserve(ACCOUNT, 1_000, "chat") for _ in range(100)))
    # Commit the even ones twice and release the odd ones twice, all at once.
    outcomes = await asyncio.gather(
        *(
            ledger.commit(h, 700) if i % 2 == 0 else ledger.release(h)
            for _ in range(2)
            for i, h in enumerate(holds)
        )
    )
    assert sum(1 for o in outcomes if o.first) == 100
    balance = await ledger.balance(ACCOUNT)
    assert balance.tokens_held == 0
    assert balance.tokens_used == 50 * 700
    assert await ledger.verify() == []
