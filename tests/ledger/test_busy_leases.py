"""A live process is never taken for dead because the database was busy (issue 10,
finding 1): while another process held the write lock no one could renew a lease, so a
sweeper that had to wait for the lock judges no lapsed lease until a lease has passed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

from ledger import Ledger

ACCOUNT = "guild:7"


def _hold_write_lock(path: Path, locked: threading.Event, seconds: float) -> None:
    """Another process's long write transaction (a sqlite3 shell, a migration)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")


async def test_a_sweeper_that_waited_for_the_lock_takes_no_live_process_for_dead(
    db_path: Path,
) -> None:
    worker = await Ledger.open(db_path, lease_seconds=1)
    sidecar = await Ledger.open(db_path, lease_seconds=1, kind="webhooks")
    try:
        hold = await worker.reserve(ACCOUNT, 1_000, "chat")
        locked = threading.Event()
        holder = asyncio.ensure_future(asyncio.to_thread(_hold_write_lock, db_path, locked, 2.5))
        await asyncio.to_thread(locked.wait)
        # Blocked behind the lock until it goes; by then the worker's lease has lapsed,
        # since its renewals were blocked as well.
        report = await sidecar.sweep()
        await holder
        assert (report.expired, report.orphaned) == (0, 0)
        committed = await worker.commit(hold, 900)
        assert (committed.status, committed.charged, committed.first) == ("committed", 900, True)

        # Once the stall is a lease old, a lease that still lapses is judged again: the
        # worker here never renewed, so its next hold is the sweeper's (and when its call
        # does finish, it is charged all the same).
        second = await worker.reserve(ACCOUNT, 500, "chat")
        sidecar.store.stalled_at -= 2 * sidecar.lease.total_seconds()
        assert (await sidecar.sweep()).orphaned == 1
        late = await worker.commit(second, 400)
        assert (late.status, late.charged) == ("committed", 400)
        balance = await worker.balance(ACCOUNT)
        assert (balance.tokens_used, balance.tokens_held) == (1_300, 0)
        assert await worker.verify() == []
    finally:
        await sidecar.close()
        await worker.close()
