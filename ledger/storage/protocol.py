"""What the ledger's operations and the application's repository are written against.

A `Connection` is the small part of a database connection they use: `execute` (awaited,
or used as `async with ... as cursor`), `execute_fetchall` and `executemany`, with `?`
placeholders and rows readable by position and by column name. SQLite's connections
(aiosqlite's, and the writer's synchronous one) are such connections; the PostgreSQL
store adapts asyncpg to it (placeholders become `$1`, `$2`...).

A `Store` runs write operations in transactions (`write`), reads on `reader`, applies
numbered migrations, and does its engine's maintenance. Nothing above ledger/storage/
imports a driver: a busy database is `ledger.errors.StoreBusy`, whatever the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


class Row(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Iterable[Any]: ...


class CursorContext(Protocol):
    """What `execute` returns: awaitable for its cursor, or an async context manager."""

    def __await__(self) -> Generator[Any, None, Any]: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> Any: ...


@runtime_checkable
class Connection(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    async def execute_fetchall(self, sql: str, parameters: Any = ..., /) -> list[Any]: ...

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


Operation = Callable[[Any], Awaitable[T]]


@dataclass(frozen=True)
class Checkpointed:
    busy: bool  # a reader or writer was in the way: the log was not emptied
    log_frames: int  # frames in the WAL (-1 if not in WAL mode; 0 once truncated)
    checkpointed: int


@dataclass(frozen=True)
class Compacted:
    converted: bool  # a one-time full rebuild ran first
    freed_bytes: int


@dataclass(frozen=True)
class Committed:
    """Ids at or below which every audit row and every hold that will ever exist is
    already committed: what an incremental verify may sum and record as done."""

    usage_id: int
    hold_rowid: int


# The newest ids, read by each store's `committed()` when no write can be in flight.
NEWEST_IDS_SQL = (
    "SELECT (SELECT COALESCE(MAX(id), 0) FROM token_usage),"
    " (SELECT COALESCE(MAX(rowid), 0) FROM holds)"
)


class Store(Protocol):
    dialect: str  # "sqlite" | "postgresql"
    reader: Any  # a Connection for reads outside any write transaction
    batches: int
    operations: int
    last_write: float
    # The sweeper's allowance for a busy database (Ledger.sweep): when the store last saw
    # writes kept from the database for `stall_seconds` (time.monotonic()), -inf if never.
    stall_seconds: float
    stalled_at: float
    # Told the size of each write batch (the application's metrics); None: nobody asks.
    on_batch: Callable[[int], None] | None

    async def write(self, op: Operation[T]) -> T: ...

    async def migrate(self, part: str, migrations: list[str]) -> None: ...

    async def close(self) -> None: ...

    async def checkpoint(self, mode: str = "TRUNCATE") -> Checkpointed: ...

    async def archive_batch(self, cutoff: str) -> int | None: ...

    async def compact(self, step_pages: int) -> Compacted: ...

    async def committed(self) -> Committed: ...
