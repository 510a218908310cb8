"""Reserve+commit pairs per second through the ledger, at 1, 10 and 100 concurrent tasks,
against the same SQL with the same pragmas on one plain synchronous `sqlite3` connection.

The baseline is not a rewrite of the ledger's SQL (which could drift from it): it runs the
ledger's own operations, statement for statement, on one `sqlite3` connection on the
caller's thread (the store's synchronous connection, whose awaits never suspend), one
transaction per operation, as a program that called sqlite3 directly would. So the ratio
shows what the async layer (the writer queue, its thread, the event loop) costs or, with
group commit, gains over the engine.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.report import Figure, cli
from ledger import Ledger, Plan, SystemClock
from ledger.storage.sqlite import SyncConnection, connect_sync, drive

# Allowances large enough that no reserve is ever refused: we measure the happy path.
PLANS = {"free": Plan("free", 10**15, 3), "pro": Plan("pro", 10**15, 0)}
ACCOUNTS = [f"guild:{n}" for n in range(1, 51)]
RESERVE, CHARGE = 1_000, 700
CONCURRENCY = (1, 10, 100)


class _SyncStore:
    """The Store's contract (`write(op)`), one BEGIN IMMEDIATE ... COMMIT per operation."""

    def __init__(self, path: Path) -> None:
        self.conn = connect_sync(path)  # the ledger's own pragmas
        self.shim = SyncConnection(self.conn)

    async def write(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = drive(op(self.shim))
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result


async def _prepare(path: Path) -> None:
    """Schema and accounts, created through the real ledger, so both sides start equal."""
    async with await Ledger.open(path, PLANS) as ledger:
        for account in ACCOUNTS:
            await ledger.record(account, "avatar_upload")


async def _ledger_rate(path: Path, pairs: int, tasks: int) -> tuple[float, float]:
    await _prepare(path)
    async with await Ledger.open(path, PLANS) as ledger:
        per_task = pairs // tasks

        async def worker(index: int) -> None:
            for n in range(per_task):
                account = ACCOUNTS[(index + n) % len(ACCOUNTS)]
                hold = await ledger.reserve(account, RESERVE, "chat", user_id=index)
                await ledger.commit(hold, CHARGE)

        batches = ledger.store.batches
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(tasks)))
        took = time.perf_counter() - started
        transactions = ledger.store.batches - batches
        return per_task * tasks / took, 2 * per_task * tasks / max(1, transactions)


async def _sync_rate(path: Path, pairs: int) -> float:
    await _prepare(path)
    store = _SyncStore(path)
    try:
        ledger = Ledger(
            store,  # type: ignore[arg-type]  # the same contract, synchronously
            PLANS,
            SystemClock(),
            hold_ttl_seconds=900,
            lease_seconds=30,
            instance_id="bench-sync",
        )
        await ledger._register("bench")
        started = time.perf_counter()
        for n in range(pairs):
            hold = await ledger.reserve(ACCOUNTS[n % len(ACCOUNTS)], RESERVE, "chat", user_id=0)
            await ledger.commit(hold, CHARGE)
        return pairs / (time.perf_counter() - started)
    finally:
        store.conn.close()


async def _measure(quick: bool) -> list[Figure]:
    pairs = 300 if quick else 3_000
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        folder = Path(tmp)
        baseline = await _sync_rate(folder / "sync.db", pairs)
        figures.append(Figure("ledger", "sqlite3 sync, pairs/s", baseline, "/s"))
        for tasks in CONCURRENCY:
            rate, per_tx = await _ledger_rate(folder / f"async-{tasks}.db", pairs, tasks)
            figures.append(Figure("ledger", f"ledger {tasks} tasks, pairs/s", rate, "/s"))
            figures.append(Figure("ledger", f"ledger {tasks} tasks, ops/transaction", per_tx, ""))
            ratio = rate / baseline
            aim = ">= 0.5 (aim 1.0)" if tasks == 100 else ""
            figures.append(
                Figure(
                    "ledger",
                    f"ratio at {tasks} tasks",
                    ratio,
                    "x",
                    aim,
                    quick_reason="few pairs on shared cores: the thread hop per batch dominates",
                )
            )
    return figures


def run(quick: bool) -> list[Figure]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    cli(run)
