"""Two OS processes on one database, on both stores: a member's cap and the low-balance
alerts hold exactly as within one process."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import Ledger
from tests.ledger.test_processes import Children

ACCOUNT = "guild:1"

# Member 5 (capped) and member 6 (not) each reserve and commit AMOUNT tokens at a time,
# 4 workers each, until refused; reports what was admitted and the alerts it raised.
WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, traceback
    from ledger import InsufficientTokens, Ledger, MemberCapReached

    async def main(path, rounds, amount):
        report = {"5": 0, "6": 0, "capped": 0, "alerts": [], "errors": []}
        try:
            async with await Ledger.open(path) as ledger:
                print("ready", flush=True)
                sys.stdin.readline()

                async def worker(user):
                    for _ in range(rounds):
                        try:
                            hold = await ledger.reserve("guild:1", amount, "chat", user_id=user)
                        except MemberCapReached:
                            report["capped"] += 1
                            continue
                        except InsufficientTokens:
                            raised = await ledger.note_refusal("guild:1")
                            report["alerts"] += [a.threshold for a in raised]
                            continue
                        result = await ledger.commit(hold, amount)
                        report["alerts"] += [a.threshold for a in result.alerts]
                        report[str(user)] += 1

                results = await asyncio.gather(
                    *(worker(user) for user in (5, 6) for _ in range(4)),
                    return_exceptions=True,
                )
                report["errors"] += [repr(r) for r in results if isinstance(r, BaseException)]
        except BaseException:
            report["errors"].append(traceback.format_exc())
        print(json.dumps(report), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


@pytest.fixture
def children(tmp_path: Path, database: str) -> Iterator[Children]:
    kids = Children(tmp_path, database)
    try:
        yield kids
    finally:
        kids.close()


async def test_two_processes_keep_a_members_cap_and_raise_each_alert_once(
    children: Children, database: str
) -> None:
    async with await Ledger.open(database) as ledger:
        await ledger.set_cap(ACCOUNT, "member", 5, 30_000, actor="user:9", reason="test")

    reports = children.race(2, WORKER, 10, 5_000)

    assert [r["errors"] for r in reports] == [[], []]
    # 2 processes x 4 workers x 10 rounds of 5,000: member 5 asked for 400,000, the cap
    # allows 6 calls; member 6 asked for 80, the pool had 44 left for them.
    assert sum(r["5"] for r in reports) == 6
    assert sum(r["capped"] for r in reports) > 0
    assert sum(r["5"] + r["6"] for r in reports) == 50  # the pool ran out exactly
    assert sorted(a for r in reports for a in r["alerts"]) == [0, 20]
    async with await Ledger.open(database) as ledger:
        spending = await ledger.member_spending(ACCOUNT, 5)
        assert (spending.tokens_used, spending.tokens_held) == (30_000, 0)
        assert (await ledger.balance(ACCOUNT)).tokens_used == 250_000
        assert await ledger.verify() == []
