"""The readers (ledger/storage/readers.py on SQLite, the pool on PostgreSQL): they see
committed data only, serve several reads at once, and a snapshot a task opened is its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from ledger import Ledger
from ledger.storage.readers import ReaderPool

PROBE = "SELECT value FROM ledger_state WHERE key = 'probe'"


async def test_readers_see_committed_data_only(ledger: Ledger) -> None:
    store = ledger.store
    inside = threading.Event()
    go_on_thread, go_on = threading.Event(), asyncio.Event()

    async def op(conn: Any) -> None:
        await conn.execute("INSERT INTO ledger_state (key, value) VALUES ('probe', '1')")
        inside.set()
        if store.dialect == "sqlite":  # on the writer's thread: block it there
            go_on_thread.wait(10)
        else:
            await asyncio.wait_for(go_on.wait(), 10)

    writing = asyncio.create_task(store.write(op))
    assert await asyncio.to_thread(inside.wait, 10)
    # The row is written, not committed: no reader sees it, however many ask at once.
    seen = await asyncio.gather(*(store.reader.execute_fetchall(PROBE) for _ in range(6)))
    assert [list(rows) for rows in seen] == [[]] * 6
    go_on_thread.set()
    go_on.set()
    await writing
    assert [tuple(r) for r in await store.reader.execute_fetchall(PROBE)] == [("1",)]


async def test_a_snapshot_is_its_tasks_own_and_others_read_beside_it(ledger: Ledger) -> None:
    store = ledger.store
    reader = store.reader
    await ledger.grant("user:1", 10, "op", "seed")
    opened, done = asyncio.Event(), asyncio.Event()
    counts: list[int] = []

    async def long_read() -> None:
        await reader.execute("BEGIN")
        try:
            counts.append((await reader.execute_fetchall("SELECT COUNT(*) FROM journal"))[0][0])
            opened.set()
            await done.wait()
            counts.append((await reader.execute_fetchall("SELECT COUNT(*) FROM journal"))[0][0])
        finally:
            await reader.execute("COMMIT")

    task = asyncio.create_task(long_read())
    await opened.wait()
    await ledger.grant("user:1", 10, "op", "while the snapshot is open")
    # Another task reads beside the open snapshot, and sees the new commit.
    now = (await reader.execute_fetchall("SELECT COUNT(*) FROM journal"))[0][0]
    done.set()
    await task
    assert counts == [1, 1] and now == 2


async def test_a_task_that_dies_in_its_snapshot_gives_its_connection_back(
    ledger: Ledger,
) -> None:
    reader = ledger.store.reader
    if not isinstance(reader, ReaderPool):
        pytest.skip("SQLite's pool")

    async def abandoned() -> None:
        await reader.execute("BEGIN")
        await reader.execute_fetchall("SELECT COUNT(*) FROM holds")
        raise RuntimeError("gone before its COMMIT")

    for _ in range(reader.size + 1):  # more than the pool holds: each must come back
        with pytest.raises(RuntimeError):
            await asyncio.create_task(abandoned())
    await asyncio.wait_for(reader.run(lambda raw: raw.execute("SELECT 1").fetchone()), 10)
    checkpoint = await ledger.store.checkpoint()
    assert not checkpoint.busy  # no snapshot left open to pin the WAL


async def test_a_cancelled_read_never_lends_a_connection_in_use(ledger: Ledger) -> None:
    reader = ledger.store.reader
    if not isinstance(reader, ReaderPool):
        pytest.skip("SQLite's pool")
    started, release = threading.Event(), threading.Event()

    def slow(raw: Any) -> int:
        started.set()
        release.wait(10)
        return int(raw.execute("SELECT 1").fetchone()[0])

    jobs = [asyncio.create_task(reader.run(slow)) for _ in range(reader.size)]
    assert await asyncio.to_thread(started.wait, 10)
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    waiting = asyncio.create_task(reader.execute_fetchall("SELECT 2"))
    await asyncio.sleep(0)  # let it queue: every connection is still on its thread
    assert not waiting.done()
    release.set()
    assert [tuple(r) for r in await asyncio.wait_for(waiting, 10)] == [(2,)]
