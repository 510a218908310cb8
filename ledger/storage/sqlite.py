"""The SQLite store: connections, migrations, and the single writer.

Promises:
- every write runs inside `BEGIN IMMEDIATE ... COMMIT` on the one writer connection,
  and only the writer thread touches that connection, so transactions never interleave;
- operations that arrive while a transaction is running are applied together in the
  next one (group commit): one fsync pays for many of them;
- each operation runs inside a savepoint of its own: one that raises a domain error
  (a LedgerError) leaves nothing of what it wrote, and its neighbours still commit;
- if a batch fails for a reason other than a domain error, it is rolled back whole and
  each operation is retried alone, so one bad operation never fails its neighbours;
- commits are durable: `synchronous=FULL` in WAL mode fsyncs the log at each commit. A
  token charge must survive a power cut as surely as the API call it paid for.

Why a thread of our own rather than aiosqlite for the writer: aiosqlite hops to its
thread and back for every statement (tens of microseconds each, on the event loop), and
a reserve plus a commit is seven statements. Here a whole batch crosses once: the writer
thread runs every operation of the batch to completion and the loop only awaits the
batch. Operations stay `async def op(conn)` written against aiosqlite's interface; on
the writer they get a synchronous connection with the same methods whose awaits never
suspend. So an operation may await only its connection (anything else is refused loudly).
Reads go to a small pool of connections of their own (ledger/storage/readers.py), each
statement on a pool thread: reads never wait for the writer, nor for one another up to
the pool's size.

All SQLite-specific detail lives here and in ledger/storage/archive.py; the PostgreSQL
store (ledger/storage/postgres.py) keeps the same promises with one pooled connection per
transaction instead of a single writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ledger.errors import LedgerError, StoreBusy
from ledger.schema import MIGRATIONS
from ledger.storage import archive
from ledger.storage.migrate import LEDGER, sqlite_migrate
from ledger.storage.protocol import NEWEST_IDS_SQL, Checkpointed, Committed, Compacted
from ledger.storage.readers import POOL_SIZE, ReaderPool

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[aiosqlite.Connection], Awaitable[T]]

BUSY_TIMEOUT_MS = 10_000
# Retries of a whole transaction when another process holds the write lock past
# busy_timeout; the caller sees "database is locked" only after all of them.
BUSY_RETRIES = 5
MAX_BATCH = 256
# After a checkpoint has emptied it, the WAL file is cut back to this size; without a
# limit it keeps the largest size it ever reached (one long reader) for the process's life.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def _pragmas(secure_delete: bool = False) -> list[str]:
    return [
        # Before WAL, which writes the header: a new database frees pages on
        # `ledger compact` (incremental_vacuum) without a VACUUM that locks writers out.
        "PRAGMA auto_vacuum=INCREMENTAL",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}",
        # Some builds (Debian's) turn it on: every deleted page is zeroed and logged, so a
        # 20k-chunk document delete wrote 157 MiB of WAL. Off unless storage.secure_delete.
        f"PRAGMA secure_delete={'ON' if secure_delete else 'OFF'}",
    ]


def connect_sync(path: str | Path, *, secure_delete: bool = False) -> sqlite3.Connection:
    # Created on the loop's thread, then used only by the writer thread.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        for pragma in _pragmas(secure_delete):
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and (
        "locked" in str(error) or "busy" in str(error)
    )


class OperationSuspended(RuntimeError):
    """A write operation awaited something other than its connection."""


class SyncCursor:
    """aiosqlite's cursor interface over a sqlite3 cursor; awaiting it never suspends."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, SyncCursor]:
        return self._self().__await__()

    async def _self(self) -> SyncCursor:
        return self

    async def __aenter__(self) -> SyncCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class SyncConnection:
    """The part of aiosqlite.Connection that write operations use, done synchronously."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Any = ()) -> SyncCursor:
        return SyncCursor(self.raw.execute(sql, parameters))

    async def execute_fetchall(self, sql: str, parameters: Any = ()) -> list[Any]:
        return self.raw.execute(sql, parameters).fetchall()

    async def executemany(self, sql: str, parameters: Any) -> SyncCursor:
        return SyncCursor(self.raw.executemany(sql, parameters))

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction


def drive(awaitable: Awaitable[T]) -> T:
    """Run to completion an awaitable that only awaits a SyncConnection."""
    steps = awaitable.__await__()
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    if isinstance(awaitable, Coroutine):
        awaitable.close()
    raise OperationSuspended("a write operation may await only its connection")


@dataclass
class _Pending:
    op: Operation[Any]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Outcome = tuple[Any, BaseException | None]
_CLOSE = object()


class SqliteStore:
    """One writer connection on its own thread, fed by a queue; a pool of readers."""

    dialect = "sqlite"
    # Told the size of each write batch (the application's metrics); None: nobody asks.
    on_batch: Callable[[int], None] | None = None

    def __init__(self, writer: sqlite3.Connection, reader: ReaderPool) -> None:
        self.writer = SyncConnection(writer)
        self.reader = reader
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._queue: asyncio.Queue[_Pending | object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._run(), name="ledger-writer"
        )
        self.batches = 0
        self.operations = 0
        self.last_write = time.monotonic()
        # When the write lock was last out of reach for `stall_seconds` or more (waited for,
        # or held that long by a transaction of ours). Every process's writes stalled
        # then, lease renewals included: the sweeper reads it (Ledger.sweep).
        self.stall_seconds = float("inf")
        self.stalled_at = float("-inf")

    @classmethod
    async def open(
        cls, path: str | Path, *, secure_delete: bool = False, readers_size: int = POOL_SIZE
    ) -> SqliteStore:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        writer = await asyncio.to_thread(connect_sync, path, secure_delete=secure_delete)
        readers: list[sqlite3.Connection] = []
        try:
            for _ in range(readers_size):
                readers.append(
                    await asyncio.to_thread(connect_sync, path, secure_delete=secure_delete)
                )
        except BaseException:
            for conn in [writer, *readers]:
                conn.close()
            raise
        reader = ReaderPool(readers)
        store = cls(writer, reader)
        try:
            await store.migrate(LEDGER, MIGRATIONS)
        except BaseException:
            await store.close()
            raise
        return store

    async def migrate(self, part: str, migrations: list[str]) -> None:
        """Apply the migrations of `part` not yet applied, in one write transaction (so
        another process opening the same file at once applies none of them twice)."""
        await self.write(lambda conn: sqlite_migrate(conn, part, migrations))

    async def close(self) -> None:
        """Finish what was submitted before the close, then close both connections."""
        if self._task is not None:
            self._queue.put_nowait(_CLOSE)
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                self._task.cancel()
                raise
            finally:
                self._task = None
                await self._shut()

    async def _shut(self) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if isinstance(pending, _Pending) and not pending.future.done():
                pending.future.set_exception(RuntimeError("the ledger is closed"))
        try:
            await self.reader.close()
        finally:
            # Behind any batch still running (the loop may have been cancelled mid-batch).
            await asyncio.wrap_future(self._thread.submit(self.writer.raw.close))
            self._thread.shutdown(wait=False)

    async def write(self, op: Operation[T]) -> T:
        """Run `op` inside a write transaction and return its result.

        The operation may be batched with others in one transaction. If it raises, none
        of what it wrote is kept (a LedgerError is its outcome; anything else fails the
        batch, which is retried op by op). It may await only the connection it is given.
        """
        if self._task is None:
            raise RuntimeError("the ledger is closed")
        pending = _Pending(op)
        self._queue.put_nowait(pending)
        try:
            return await pending.future
        except sqlite3.OperationalError as error:
            if is_busy(error):
                raise StoreBusy(str(error)) from error
            raise

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is _CLOSE:
                return
            batch: list[_Pending] = [item]  # type: ignore[list-item]
            closing = False
            while len(batch) < MAX_BATCH and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is _CLOSE:
                    closing = True
                    break
                batch.append(more)  # type: ignore[arg-type]
            batch = [p for p in batch if not p.future.cancelled()]
            if batch:
                if self.on_batch is not None:  # the application's metrics
                    self.on_batch(len(batch))
                await self._apply_batch(batch)
            if closing:
                return

    async def _apply_batch(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self._in_thread([p.op for p in batch])
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(RuntimeError("the ledger is closed"))
            raise
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0], None, error)
                return
            log.warning("ledger batch of %d failed (%s); retrying one by one", len(batch), error)
            for p in batch:
                try:
                    (outcome,) = await self._in_thread([p.op])
                except asyncio.CancelledError:
                    raise
                except Exception as single_error:
                    outcome = (None, single_error)
                _settle(p, *outcome)
            return
        for p, outcome in zip(batch, outcomes, strict=True):
            _settle(p, *outcome)

    async def _in_thread(self, ops: list[Operation[Any]]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(self._thread, self._transaction, ops)
        self.batches += 1
        self.operations += len(ops)
        self.last_write = time.monotonic()
        return outcomes

    def _transaction(self, ops: list[Operation[Any]]) -> list[Outcome]:
        """On the writer thread: one transaction holding every operation of the batch."""
        raw = self.writer.raw
        asked = time.monotonic()
        for attempt in range(BUSY_RETRIES + 1):
            try:
                raw.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if not is_busy(error) or attempt == BUSY_RETRIES:
                    self._note_stall(asked)
                    raise
                time.sleep(0.05 * (attempt + 1))  # on the writer thread, not the loop
        self._note_stall(asked)
        began = time.monotonic()
        outcomes: list[Outcome] = []
        try:
            for op in ops:
                # A savepoint per operation: a refusal or a failed check after some writes
                # (a stored document before its charge was refused) must undo them all.
                raw.execute("SAVEPOINT op")
                try:
                    outcomes.append((drive(op(self.writer)), None))  # type: ignore[arg-type]
                except LedgerError as error:
                    raw.execute("ROLLBACK TO op")
                    outcomes.append((None, error))
                raw.execute("RELEASE op")
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        finally:
            self._note_stall(began)
        return outcomes

    def _note_stall(self, since: float) -> None:
        now = time.monotonic()
        if now - since >= self.stall_seconds:
            self.stalled_at = now

    async def on_writer(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job` on the writer's thread between two batches, outside any transaction
        (it opens its own), for maintenance that a write operation cannot do: pragmas,
        checkpoints, vacuum. Paid calls queue behind it, so a job must be short."""
        if self._task is None:
            raise RuntimeError("the ledger is closed")
        loop = asyncio.get_running_loop()

        def timed(raw: sqlite3.Connection) -> T:
            began = time.monotonic()
            try:
                return job(raw)
            finally:
                self._note_stall(began)  # it may have held the write lock that long

        return await loop.run_in_executor(self._thread, timed, self.writer.raw)

    async def committed(self) -> Committed:
        # One writer: ids are handed out in commit order, so what a reader sees is final.
        rows = await self.reader.execute_fetchall(NEWEST_IDS_SQL)
        ((usage_id, hold_rowid),) = rows
        return Committed(int(usage_id), int(hold_rowid))

    async def checkpoint(self, mode: str = "TRUNCATE") -> Checkpointed:
        """Copy the WAL into the database and, when no reader still needs it, empty it.
        Never waits for a reader: a busy reader makes it a partial checkpoint."""
        assert mode in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}

        def job(raw: sqlite3.Connection) -> Checkpointed:
            raw.execute("PRAGMA busy_timeout=0")
            try:
                busy, log_frames, done = raw.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            finally:
                raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            return Checkpointed(bool(busy), log_frames, done)

        return await self.on_writer(job)

    async def archive_batch(self, cutoff: str) -> int | None:
        """One batch of the hold archive (ledger/storage/archive.py), between two group
        commits, with foreign keys off for it alone."""
        return await self.on_writer(lambda raw: archive.archive_batch(raw, cutoff))

    async def compact(self, step_pages: int) -> Compacted:
        """Give free pages back to the file system a few thousand at a time (incremental
        vacuum: writers only wait for one step). A database made before
        auto_vacuum=INCREMENTAL needs one full VACUUM first (writers wait for it)."""
        converted = await self.on_writer(_pragma_value("auto_vacuum")) != 2
        if converted:

            def convert(raw: sqlite3.Connection) -> None:
                raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
                raw.execute("VACUUM")

            await self.on_writer(convert)
        freed = 0
        while True:

            def step(raw: sqlite3.Connection) -> int:
                before = raw.execute("PRAGMA freelist_count").fetchone()[0]
                if before:
                    raw.execute(f"PRAGMA incremental_vacuum({step_pages})").fetchall()
                return int(before - raw.execute("PRAGMA freelist_count").fetchone()[0])

            pages = await self.on_writer(step)
            freed += pages
            if pages == 0:
                break
        page_size = await self.on_writer(_pragma_value("page_size"))
        return Compacted(converted, freed * page_size)


def _pragma_value(name: str) -> Callable[[sqlite3.Connection], int]:
    return lambda raw: int(raw.execute(f"PRAGMA {name}").fetchone()[0])


def _settle(pending: _Pending, result: Any, error: BaseException | None) -> None:
    if pending.future.done():
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result)
