"""Reserve+commit pairs per second with members' caps set, against the same without caps,
in one run: what checking a cap inside the reserve's transaction costs.

Both sides run the same workload through the real ledger (every reserve names a member
and three roles, so the member counters are kept either way); the capped side has a
default cap, a cap on each role and one per member, all generous enough that nothing is
refused: we measure the happy path. Each round times the two sides back to back (which
goes first alternates) and the ratio is the median of the rounds' own ratios: on a shared
machine a slow moment then lands on one round, not on one side (best-of-rounds per side
swung from 0.45x to 1.17x between three runs here).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.report import Figure, cli, median
from ledger import Ledger, Plan

PLANS = {"free": Plan("free", 10**15, 3), "pro": Plan("pro", 10**15, 0)}
ACCOUNTS = [f"guild:{n}" for n in range(1, 11)]
ROLES = (301, 302, 303)
RESERVE, CHARGE = 1_000, 700
TASKS = 10
ROUNDS = 3
FULL_ROUNDS = 7


async def _prepare(path: Path, capped: bool) -> None:
    """Accounts (and caps), written in a session of their own: closing it checkpoints the
    log, so both sides start their timed part from the same state."""
    async with await Ledger.open(path, PLANS) as ledger:
        for account in ACCOUNTS:
            await ledger.record(account, "avatar_upload")
            if not capped:
                continue
            await ledger.set_cap(account, "default", "", 10**12, actor="bench", reason="x")
            for role in ROLES:
                await ledger.set_cap(account, "role", role, 10**12, actor="bench", reason="x")
            for user in range(TASKS):
                await ledger.set_cap(account, "member", user, 10**12, actor="bench", reason="x")


async def _rate(path: Path, pairs: int) -> float:
    async with await Ledger.open(path, PLANS) as ledger:
        per_task = pairs // TASKS

        async def worker(user: int) -> None:
            for n in range(per_task):
                account = ACCOUNTS[(user + n) % len(ACCOUNTS)]
                hold = await ledger.reserve(account, RESERVE, "chat", user_id=user, roles=ROLES)
                await ledger.commit(hold, CHARGE)

        started = time.perf_counter()
        await asyncio.gather(*(worker(u) for u in range(TASKS)))
        return per_task * TASKS / (time.perf_counter() - started)


async def _measure(quick: bool) -> list[Figure]:
    pairs, rounds = (300, ROUNDS) if quick else (3_000, FULL_ROUNDS)
    rates: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="caps-bench-") as tmp:
        for round_ in range(rounds):
            for capped in rates:
                await _prepare(Path(tmp, f"{capped}-{round_}.db"), capped)
        for round_ in range(rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            got = {c: await _rate(Path(tmp, f"{c}-{round_}.db"), pairs) for c in order}
            for capped, rate in got.items():
                rates[capped].append(rate)
            ratios.append(got[True] / got[False])
    ratio = median(ratios)
    return [
        Figure("caps", f"no caps, {TASKS} tasks, pairs/s (median)", median(rates[False]), "/s"),
        Figure("caps", f"caps set, {TASKS} tasks, pairs/s (median)", median(rates[True]), "/s"),
        Figure("caps", f"ratio caps / no caps (median of {rounds} rounds)", ratio, "x", ">= 0.9"),
    ]


def run(quick: bool) -> list[Figure]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    cli(run)
