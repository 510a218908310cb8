"""Reserve+commit pairs per second through the ledger on PostgreSQL, at 1, 10 and 100
concurrent tasks, against the very same statements issued through bare asyncpg.

The baseline is not a rewrite of the ledger's SQL (which could drift from it): one
reserve+commit through the ledger is recorded, statement by statement as the store sent
them to asyncpg (placeholders and casts rendered), and replayed on a pool of the same
size, one transaction per operation, with a fresh hold id and the pair's own account. So
the ratio shows what the ledger and its store add around the engine.

PostgreSQL at BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test), in a
schema of its own that is dropped afterwards; without a server the figures are skipped.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg

from bench.report import Figure, cli
from ledger import Ledger, Plan
from ledger.storage import postgres

DSN = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PLANS = {"free": Plan("free", 10**15, 3), "pro": Plan("pro", 10**15, 0)}
ACCOUNTS = [f"guild:{n}" for n in range(1, 51)]
RESERVE, CHARGE = 1_000, 700
CONCURRENCY = (1, 10, 100)

Recorded = list[tuple[str, str, tuple[Any, ...]]]  # (method, text, args) per statement


class _Recorder:
    """An asyncpg connection that notes what the store sends it."""

    def __init__(self, raw: Any, log: list[tuple[str, str, tuple[Any, ...]]]) -> None:
        self._raw, self._log = raw, log

    async def fetch(self, text: str, *args: Any) -> Any:
        self._log.append(("fetch", text, args))
        return await self._raw.fetch(text, *args)

    async def execute(self, text: str, *args: Any) -> Any:
        self._log.append(("execute", text, args))
        return await self._raw.execute(text, *args)

    async def executemany(self, text: str, rows: Any) -> Any:
        return await self._raw.executemany(text, rows)


async def _record(ledger: Ledger) -> tuple[Recorded, Recorded, str, str]:
    """The statements of one reserve, and of one commit, as the store issued them."""
    store = ledger.store
    reserve_log: Recorded = []
    commit_log: Recorded = []
    real = postgres.PgConnection

    class Recording(real):  # type: ignore[misc,valid-type]
        target: Recorded = reserve_log

        def __init__(self, conn: Any) -> None:
            super().__init__(_Recorder(conn, Recording.target))

    postgres.PgConnection = Recording  # type: ignore[misc]
    try:
        hold = await ledger.reserve(ACCOUNTS[0], RESERVE, "chat", user_id=0)
        Recording.target = commit_log
        await ledger.commit(hold, CHARGE)
    finally:
        postgres.PgConnection = real  # type: ignore[misc]
    assert store.dialect == "postgresql"
    return reserve_log, commit_log, hold.hold_id, ACCOUNTS[0]


def _swap(args: tuple[Any, ...], old: dict[Any, Any]) -> tuple[Any, ...]:
    return tuple(old.get(a, a) if isinstance(a, str) else a for a in args)


async def _bare_rate(
    dsn: str, recorded: tuple[Recorded, Recorded, str, str], pairs: int, tasks: int
) -> float:
    reserve_log, commit_log, hold_id, account = recorded
    # Opened whole before the clock starts, as the ledger's pool is warm by then.
    size = postgres.POOL_SIZE
    pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
    try:
        per_task = pairs // tasks

        async def transaction(log: Recorded, swap: dict[Any, Any]) -> None:
            async with pool.acquire() as conn, conn.transaction():
                for method, text, args in log:
                    await getattr(conn, method)(text, *_swap(args, swap))

        async def worker(index: int) -> None:
            for n in range(per_task):
                swap = {hold_id: uuid.uuid4().hex, account: ACCOUNTS[(index + n) % len(ACCOUNTS)]}
                await transaction(reserve_log, swap)
                await transaction(commit_log, swap)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(tasks)))
        return per_task * tasks / (time.perf_counter() - started)
    finally:
        await pool.close()


async def _ledger_rate(ledger: Ledger, pairs: int, tasks: int) -> float:
    per_task = pairs // tasks

    async def worker(index: int) -> None:
        for n in range(per_task):
            account = ACCOUNTS[(index + n) % len(ACCOUNTS)]
            hold = await ledger.reserve(account, RESERVE, "chat", user_id=0)
            await ledger.commit(hold, CHARGE)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return per_task * tasks / (time.perf_counter() - started)


async def _measure(quick: bool) -> list[Figure]:
    pairs = 200 if quick else 2_000
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return []
    await admin.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{DSN}{'&' if '?' in DSN else '?'}search_path={schema}"
    figures: list[Figure] = []
    try:
        async with await Ledger.open(dsn, PLANS) as ledger:
            for account in ACCOUNTS:
                await ledger.record(account, "avatar_upload")
            recorded = await _record(ledger)
            for tasks in CONCURRENCY:
                bare = await _bare_rate(dsn, recorded, pairs, tasks)
                rate = await _ledger_rate(ledger, pairs, tasks)
                figures.append(
                    Figure("postgres", f"bare asyncpg {tasks} tasks, pairs/s", bare, "/s")
                )
                figures.append(Figure("postgres", f"ledger {tasks} tasks, pairs/s", rate, "/s"))
                ratio = rate / bare
                aim = ">= 0.8" if tasks == 100 else ""
                met = ratio >= 0.8 if tasks == 100 else None
                figures.append(Figure("postgres", f"ratio at {tasks} tasks", ratio, "x", aim, met))
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    return figures


def run(quick: bool) -> list[Figure]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    cli(run)
