"""SQLite's readers: a small pool of connections, each read on a thread of its own.

Why a pool: with one reader connection every read queued behind the one before it, so
one member repeating /tokens on a heavy account, or one cold retrieval load of a large
agent, made every other account's balance read wait (0.5 ms became 50 ms). In WAL mode
readers never block the writer nor each other, so POOL_SIZE connections serve that many
reads at once; a read sees the last commit before it started, never a transaction in
progress (the writer's own connection is not in the pool).

The pool speaks the Connection protocol (ledger/storage/protocol.py) for the ledger's and
the application's reads: each statement borrows a connection, runs on the pool's threads
and gives it back. A task that says BEGIN keeps its connection, in one snapshot, until its
COMMIT or ROLLBACK (verify reads a page of accounts and their rows that way), as the
PostgreSQL reader does. `run` hands a whole job a connection on a pool thread, for reads
that must not cross to the event loop row by row (the export, the chunk matrix).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ledger.storage.fetched import FetchedCursor, PendingCursor

T = TypeVar("T")

POOL_SIZE = 4
CLOSE_WAIT_SECONDS = 5.0


def _statement(raw: sqlite3.Connection, sql: str, parameters: Any) -> tuple[list[Any], int]:
    if sql.lstrip()[:6].upper() == "PRAGMA":
        # A pragma (index_list, table_info...) answers from the connection's copy of the
        # schema without checking it is current; a read of the schema table reloads it
        # if another connection (the writer's migrations) changed it since.
        raw.execute("SELECT 1 FROM sqlite_master LIMIT 0").fetchall()
    cursor = raw.execute(sql, parameters)
    try:
        return cursor.fetchall(), cursor.rowcount
    finally:
        cursor.close()


class ReaderPool:
    dialect = "sqlite"

    def __init__(self, connections: list[sqlite3.Connection]) -> None:
        self._all = list(connections)
        self._free: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        for conn in self._all:
            self._free.put_nowait(conn)
        self._threads = ThreadPoolExecutor(
            max_workers=len(self._all), thread_name_prefix="ledger-reader"
        )
        self._pinned: dict[asyncio.Task[Any], sqlite3.Connection] = {}
        self.size = len(self._all)
        self.waits = 0  # reads that found every connection busy (the application's metrics)

    async def _use(
        self, job: Callable[..., T], *args: Any, conn: sqlite3.Connection | None = None
    ) -> T:
        """`job(conn, *args)` on a pool thread: the task's pinned connection, or one
        borrowed for it. A borrowed connection goes back when the job has finished on its
        thread, even if the awaiting task was cancelled meanwhile: never two threads on it."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        pinned = conn or (self._pinned.get(task) if task is not None else None)
        if pinned is not None:
            return await loop.run_in_executor(self._threads, job, pinned, *args)
        if self._free.empty():
            self.waits += 1
        borrowed = await self._free.get()
        try:
            done = self._threads.submit(job, borrowed, *args)
        except BaseException:
            self._free.put_nowait(borrowed)
            raise
        # On the thread's future, not the loop's: a cancelled await ends at once, the
        # job on its thread does not.
        done.add_done_callback(lambda _: conn_back(self._free, borrowed, loop))
        return await asyncio.wrap_future(done)

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """`job` on one pooled connection, on a pool thread (outside any transaction of
        its own unless it opens one; each statement in autocommit is its own snapshot)."""
        return await self._use(job)

    async def run_op(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """An async operation written against the Connection protocol, run whole on one
        pooled connection on a pool thread (driven there like a write operation on the
        writer: it may await only its connection)."""
        from ledger.storage.sqlite import SyncConnection, drive

        return await self._use(lambda raw: drive(op(SyncConnection(raw))))

    async def _execute(self, sql: str, parameters: Any) -> FetchedCursor:
        word = sql.strip().upper()
        task = asyncio.current_task()
        if task is not None and word in {"BEGIN", "BEGIN DEFERRED"} and task not in self._pinned:
            conn = await self._free.get()
            self._pinned[task] = conn
            # A task that ends without its COMMIT (cancelled, failed) must not keep a
            # snapshot open: it would pin every WAL page written after it.
            task.add_done_callback(self._unpin)
            await self._use(_execute_only, "BEGIN", conn=conn)
            return FetchedCursor([], -1)
        if task is not None and word in {"COMMIT", "ROLLBACK"} and task in self._pinned:
            conn = self._pinned.pop(task)
            task.remove_done_callback(self._unpin)
            try:
                await self._use(_execute_only, word, conn=conn)
            finally:
                self._free.put_nowait(conn)
            return FetchedCursor([], -1)
        rows, count = await self._use(_statement, sql, parameters)
        return FetchedCursor(rows, count)

    def _unpin(self, task: asyncio.Task[Any]) -> None:
        conn = self._pinned.pop(task, None)
        if conn is None:
            return

        def rollback(raw: sqlite3.Connection) -> None:
            if raw.in_transaction:
                raw.execute("ROLLBACK")

        loop = task.get_loop()
        self._threads.submit(rollback, conn).add_done_callback(
            lambda _: conn_back(self._free, conn, loop)
        )

    def execute(self, sql: str, parameters: Any = ()) -> PendingCursor:
        return PendingCursor(self._execute(sql, parameters))

    async def execute_fetchall(self, sql: str, parameters: Any = ()) -> list[Any]:
        rows, _ = await self._use(_statement, sql, parameters)
        return rows

    async def executemany(self, sql: str, parameters: Any) -> FetchedCursor:
        count = await self._use(_many, sql, parameters)
        return FetchedCursor([], count)

    async def close(self) -> None:
        """Once every connection is back (reads in flight finish first)."""
        loop = asyncio.get_running_loop()
        for _ in self._all:
            try:
                await asyncio.wait_for(self._free.get(), CLOSE_WAIT_SECONDS)
            except TimeoutError:  # a task kept its snapshot: closed under it
                break
        for conn in self._all:
            await loop.run_in_executor(self._threads, conn.close)
        self._threads.shutdown(wait=False)


def conn_back(free: asyncio.Queue[sqlite3.Connection], conn: sqlite3.Connection, loop: Any) -> None:
    """From a pool thread: the connection back in the queue, on the loop's thread."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(free.put_nowait, conn)


def _execute_only(raw: sqlite3.Connection, sql: str) -> None:
    raw.execute(sql)


def _many(raw: sqlite3.Connection, sql: str, parameters: Any) -> int:
    return raw.executemany(sql, parameters).rowcount
