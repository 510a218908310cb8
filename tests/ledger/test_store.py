"""The store's writer: operations run whole on its thread, in batches, and a close
finishes what was submitted before it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

from ledger.errors import LedgerError
from ledger.storage.sqlite import OperationSuspended
from ledger.storage.sqlite import SqliteStore as Store


async def _count(store: Store) -> int:
    rows = await store.reader.execute_fetchall("SELECT COUNT(*) FROM t")
    return int(rows[0][0])


@pytest.fixture
async def store(tmp_path: Path):
    opened = await Store.open(tmp_path / "store.db")
    try:
        await opened.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        yield opened
    finally:
        await opened.close()


async def test_an_operation_that_awaits_more_than_its_connection_is_refused_alone(
    store: Store,
) -> None:
    async def strays(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO t VALUES (1)")
        await asyncio.sleep(0)  # would run on the writer thread with no loop: refused

    async def insert(conn: aiosqlite.Connection) -> int:
        await conn.execute("INSERT INTO t VALUES (2)")
        return 2

    results = await asyncio.gather(store.write(strays), store.write(insert), return_exceptions=True)
    assert isinstance(results[0], OperationSuspended)
    assert results[1] == 2
    rows = await store.reader.execute_fetchall("SELECT n FROM t")
    assert [r[0] for r in rows] == [2]  # the stray's own insert was rolled back


async def test_an_operation_that_raises_a_domain_error_keeps_nothing_it_wrote(
    store: Store,
) -> None:
    """Issue 10, finding 9: a document stored before its charge was refused was kept."""
    before = store.batches

    async def half(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO t VALUES (1)")
        raise LedgerError("refused after a write")

    async def insert(conn: aiosqlite.Connection) -> int:
        await conn.execute("INSERT INTO t VALUES (2)")
        return 2

    results = await asyncio.gather(
        store.write(insert), store.write(half), store.write(insert), return_exceptions=True
    )
    assert isinstance(results[1], LedgerError) and results[0::2] == [2, 2]
    assert store.batches - before == 1  # one transaction: the neighbours were not retried
    rows = await store.reader.execute_fetchall("SELECT n FROM t")
    assert [r[0] for r in rows] == [2, 2]


async def test_waiting_operations_share_one_transaction(store: Store) -> None:
    before = store.batches

    async def insert(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO t VALUES (1)")

    await asyncio.gather(*(store.write(insert) for _ in range(50)))
    assert await _count(store) == 50
    assert store.batches - before < 50


async def test_close_finishes_what_was_submitted_before_it(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "close.db")
    await store.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
    writes = [
        asyncio.ensure_future(store.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)")))
        for _ in range(20)
    ]
    await asyncio.sleep(0)  # let them reach the queue, as callers already awaiting would
    await store.close()
    assert all(w.done() and w.exception() is None for w in writes)
    with pytest.raises(RuntimeError, match="closed"):
        await store.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    reopened = await Store.open(tmp_path / "close.db")
    try:
        assert await _count(reopened) == 20
    finally:
        await reopened.close()
