"""The SQLite store: connections, migrations, and the single writer.

Promises:
- every write runs inside `BEGIN IMMEDIATE ... COMMIT` on the one writer connection,
  and only the writer task touches that connection, so transactions never interleave;
- operations that arrive while a transaction is running are applied together in the
  next one (group commit): one fsync pays for many of them;
- if a batch fails for a reason other than a domain error, it is rolled back whole and
  each operation is retried alone, so one bad operation never fails its neighbours;
- commits are durable: `synchronous=FULL` in WAL mode fsyncs the log at each commit. A
  token charge must survive a power cut as surely as the API call it paid for.

All SQLite-specific detail lives here and in the modules that issue SQL, so a move to
PostgreSQL is a new store, not a rewrite.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ledger.errors import LedgerError
from ledger.schema import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[aiosqlite.Connection], Awaitable[T]]

BUSY_TIMEOUT_MS = 10_000
# Retries of a whole transaction when another process holds the write lock past
# busy_timeout; the caller sees "database is locked" only after all of them.
BUSY_RETRIES = 5
MAX_BATCH = 256


def _pragmas() -> list[str]:
    return [
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
    ]


async def connect(path: str | Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = aiosqlite.Row
    try:
        for pragma in _pragmas():
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


def is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and (
        "locked" in str(error) or "busy" in str(error)
    )


@dataclass
class _Pending:
    op: Operation[Any]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Store:
    """One writer connection fed by a queue, one reader connection."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.writer = writer
        self.reader = reader
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._run(), name="ledger-writer"
        )
        self.batches = 0
        self.operations = 0

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        writer = await connect(path)
        try:
            await migrate(writer)
            reader = await connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the ledger is closed"))
        await self.reader.close()
        await self.writer.close()

    async def write(self, op: Operation[T]) -> T:
        """Run `op` inside a write transaction and return its result.

        The operation may be batched with others in one transaction. It must raise a
        LedgerError only when what it wrote so far is correct to keep (such as creating
        the account or rolling its period over before refusing a reserve).
        """
        if self._task is None:
            raise RuntimeError("the ledger is closed")
        pending = _Pending(op)
        self._queue.put_nowait(pending)
        return await pending.future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.cancelled()] or batch[:0]
            if not batch:
                continue
            try:
                await self._apply(batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RuntimeError("the ledger is closed"))
                raise
            except Exception as error:
                if len(batch) == 1:
                    _settle(batch[0], None, error)
                    continue
                log.warning(
                    "ledger batch of %d failed (%s); retrying one by one", len(batch), error
                )
                for p in batch:
                    try:
                        await self._apply([p])
                    except asyncio.CancelledError:
                        raise
                    except Exception as single_error:
                        _settle(p, None, single_error)

    async def _apply(self, batch: list[_Pending]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        for attempt in range(BUSY_RETRIES + 1):
            try:
                await self.writer.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if not is_busy(error) or attempt == BUSY_RETRIES:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        try:
            for p in batch:
                try:
                    results.append((await p.op(self.writer), None))
                except LedgerError as error:
                    results.append((None, error))
            await self.writer.execute("COMMIT")
        except BaseException:
            if self.writer.in_transaction:
                await asyncio.shield(self.writer.execute("ROLLBACK"))
            raise
        self.batches += 1
        self.operations += len(batch)
        for p, (result, error) in zip(batch, results, strict=True):
            _settle(p, result, error)


def _settle(pending: _Pending, result: Any, error: BaseException | None) -> None:
    if pending.future.done():
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result)


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply the migrations not yet applied; returns the schema version."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            async with conn.execute("PRAGMA user_version") as cursor:
                current = (await cursor.fetchone())[0]
            if current >= number:
                await conn.execute("COMMIT")
                continue
            for statement in split_statements(script):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version={number}")
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        version = number
    return max(version, len(MIGRATIONS))


def split_statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows triggers)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
