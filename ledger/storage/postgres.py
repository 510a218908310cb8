"""The PostgreSQL store (asyncpg), for deployments with several processes on several hosts.

The same promises as the SQLite store, kept differently:
- each write operation runs in a transaction of its own on a pooled connection (READ
  COMMITTED): one that raises leaves nothing of what it wrote;
- correctness does not lean on a single writer: a reserve is one conditional UPDATE, and
  every write that reads an account row first locks it (`FOR UPDATE`, see
  `ledger.storage.lock_rows`), so read-then-write never loses an update;
- a deadlock or a serialization failure retries the whole operation (operations are
  plain functions of the database state, so running one again is safe); a lock that is
  not granted within LOCK_TIMEOUT is `StoreBusy`;
- commits are durable (synchronous_commit on, the server's default).

Operations are written with SQLite's `?` (or `:name`) placeholders; they become `$1`,
`$2`... here, once per distinct statement. Integer sums come back as int, not Decimal.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from ledger.errors import StoreBusy
from ledger.schema import MIGRATIONS
from ledger.storage.fetched import FetchedCursor, PendingCursor
from ledger.storage.migrate import LEDGER, postgres_migrate
from ledger.storage.protocol import (
    NEWEST_IDS_SQL,
    Checkpointed,
    Committed,
    Compacted,
    Operation,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_SIZE = 10
RETRIES = 20
LOCK_TIMEOUT_MS = 10_000
# Identity values are handed out in no order of commit: a transaction that took audit id
# 100 may commit after one that took 101, so "the largest id visible" is no watermark.
# Every write transaction holds this advisory lock shared from its BEGIN (in the same
# round trip); `committed()` takes it exclusively for an instant, when no write is in
# flight, and reads the largest ids then: every lower id is final. Two-int form: its own
# key space, apart from the bigint keys of `serialize` and of the migrations.
_WRITES = "1818584167, 1"
_BEGIN = f"BEGIN; SELECT pg_advisory_xact_lock_shared({_WRITES})"
# Writes queue behind a waiting fence, so it waits less than a write would for a lock.
FENCE_TIMEOUT_MS = LOCK_TIMEOUT_MS // 2
_RETRYABLE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)
_BUSY = (
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
)

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|\?|:[A-Za-z_]\w*")
_EMPTY_IN = re.compile(r"\bIN \(\s*\)", re.I)
_ROWS = re.compile(r"^\s*(SELECT|WITH|VALUES)\b|\bRETURNING\b", re.I | re.S)


_CASTS: dict[type, str] = {
    bool: "::bigint",
    int: "::bigint",
    float: "::double precision",
    str: "::text",
    bytes: "::bytea",
    bytearray: "::bytea",
    memoryview: "::bytea",
}


def translate(sql: str) -> tuple[list[str], list[int | str]]:
    """Split a statement at its `?` and `:name` placeholders: the text between them and,
    for each placeholder, its argument (a position, or a name)."""
    pieces: list[str] = []
    keys: list[int | str] = []
    last = 0
    count = 0
    for match in _TOKEN.finditer(sql):
        token = match.group(0)
        if token == "?":
            key: int | str = count
            count += 1
        elif token.startswith(":") and token != "::":
            key = token[1:]
        else:
            continue
        pieces.append(sql[last : match.start()])
        keys.append(key)
        last = match.end()
    pieces.append(sql[last:])
    return pieces, keys


class _Statement:
    """One SQLite-style statement; rendered for PostgreSQL once per argument types.

    Each `$n` is cast to its argument's type (bigint, text, bytea...), as SQLite's
    dynamic typing would take it: PostgreSQL cannot always deduce a parameter's type
    (`? IS NULL`, a value both inserted and compared) and refuses an ambiguous one."""

    __slots__ = ("keys", "names", "pieces", "rendered", "returns_rows")

    def __init__(self, sql: str) -> None:
        # SQLite takes an empty list (`IN ()`, no roles, no dead instances); PostgreSQL not.
        self.pieces, self.keys = translate(_EMPTY_IN.sub("IN (NULL)", sql))
        named = [k for k in self.keys if isinstance(k, str)]
        self.names: list[str] | None = list(dict.fromkeys(named)) if named else None
        self.returns_rows = bool(_ROWS.search(sql))
        self.rendered: dict[tuple[type, ...], tuple[str, list[int] | None]] = {}

    def args(self, parameters: Any) -> Sequence[Any]:
        if self.names is not None:
            return [parameters[n] for n in self.names]
        if parameters is None:
            return ()
        return parameters

    def render(self, args: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        """The statement for these arguments' types, and the arguments it takes: a None
        is written as NULL in the text (its type could not be deduced), as SQLite binds it."""
        signature = tuple(type(a) for a in args)
        found = self.rendered.get(signature)
        if found is None:
            kept = [i for i, t in enumerate(signature) if t is not type(None)]
            number_of = {old: new + 1 for new, old in enumerate(kept)}
            out = [self.pieces[0]]
            for key, piece in zip(self.keys, self.pieces[1:], strict=True):
                index = key if isinstance(key, int) else (self.names or []).index(key)
                if signature[index] is type(None):
                    out.append(f"NULL{piece}")
                else:
                    cast = _CASTS.get(signature[index], "")
                    out.append(f"${number_of[index]}{cast}{piece}")
            found = ("".join(out), kept if len(kept) < len(signature) else None)
            self.rendered[signature] = found
        text, keep = found
        return text, args if keep is None else [args[i] for i in keep]


_CACHE: dict[str, _Statement] = {}


def _statement(sql: str) -> _Statement:
    found = _CACHE.get(sql)
    if found is None:
        found = _Statement(sql)
        if len(_CACHE) < 4096:
            _CACHE[sql] = found
    return found


class PgConnection:
    """The Connection protocol over one asyncpg connection (or the pool, for reads)."""

    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Any = ()) -> PendingCursor:
        return PendingCursor(self._execute(sql, parameters))

    async def _execute(self, sql: str, parameters: Any) -> FetchedCursor:
        statement = _statement(sql)
        text, args = statement.render(statement.args(parameters))
        if statement.returns_rows:
            rows = await self.raw.fetch(text, *args)
            return FetchedCursor(rows, len(rows))
        status = await self.raw.execute(text, *args)
        tail = status.rsplit(" ", 1)[-1] if status else ""
        return FetchedCursor([], int(tail) if tail.isdigit() else -1)

    async def execute_fetchall(self, sql: str, parameters: Any = ()) -> list[Any]:
        statement = _statement(sql)
        text, args = statement.render(statement.args(parameters))
        return await self.raw.fetch(text, *args)

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> None:
        statement = _statement(sql)
        # Rows rendered alike share one statement (a None in one row changes its text).
        groups: dict[str, list[Sequence[Any]]] = {}
        for p in parameters:
            text, args = statement.render(statement.args(p))
            groups.setdefault(text, []).append(args)
        for text, rows in groups.items():
            await self.raw.executemany(text, rows)

    async def close(self) -> None:  # the reader's pool is closed by the store
        return None


class PgReader(PgConnection):
    """Reads on the pool, one statement per borrowed connection; a task that says BEGIN
    keeps one connection, in a REPEATABLE READ snapshot, until its COMMIT or ROLLBACK (the
    paged jobs read each page in one snapshot, as they do on SQLite's reader)."""

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)
        self._pinned: dict[asyncio.Task[Any], Any] = {}

    def _conn(self) -> Any:
        task = asyncio.current_task()
        return self._pinned.get(task, self.raw) if task is not None else self.raw

    async def _execute(self, sql: str, parameters: Any) -> FetchedCursor:
        word = sql.strip().upper()
        task = asyncio.current_task()
        if word in {"BEGIN", "BEGIN DEFERRED"} and task is not None:
            conn = await self.raw.acquire()
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._pinned[task] = conn
            return FetchedCursor([], -1)
        if word in {"COMMIT", "ROLLBACK"} and task is not None:
            conn = self._pinned.pop(task, None)
            if conn is not None:
                try:
                    await conn.execute(word)
                finally:
                    await self.raw.release(conn)
            return FetchedCursor([], -1)
        return await PgConnection(self._conn())._execute(sql, parameters)

    async def execute_fetchall(self, sql: str, parameters: Any = ()) -> list[Any]:
        return await PgConnection(self._conn()).execute_fetchall(sql, parameters)


def _numeric(text: str) -> int | float | Decimal:
    # SUM() of a bigint is numeric in PostgreSQL: tokens are integers, keep them int.
    if "." not in text and "e" not in text.lower() and text not in {"NaN", "Infinity"}:
        return int(text)
    return float(text)


async def _init(conn: Any) -> None:
    await conn.set_type_codec(
        "numeric", encoder=str, decoder=_numeric, schema="pg_catalog", format="text"
    )


async def _roll_back(raw: Any) -> None:
    try:
        if raw.is_in_transaction():
            await raw.execute("ROLLBACK")
    except Exception:  # a broken or busy connection: the pool's reset rolls it back
        log.debug("rollback failed; the pool resets the connection", exc_info=True)


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.reader = PgReader(pool)
        self.batches = 0
        self.operations = 0
        self.retries = 0
        self.last_write = time.monotonic()
        # No single write lock here: a lease renewal updates its own instances row, which
        # no other transaction waits on, so renewals never stall behind others' writes.
        self.stall_seconds = float("inf")
        self.stalled_at = float("-inf")
        # Told the size of each write batch; here every write is a transaction of its own.
        self.on_batch: Callable[[int], None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = POOL_SIZE) -> PostgresStore:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=pool_size,
            init=_init,
            server_settings={"lock_timeout": str(LOCK_TIMEOUT_MS)},
        )
        store = cls(pool)
        try:
            await store.migrate(LEDGER, MIGRATIONS)
        except BaseException:
            await store.close()
            raise
        return store

    async def migrate(self, part: str, migrations: list[str]) -> None:
        """Under a transaction-scoped advisory lock, so processes starting together
        apply each migration once."""

        async def op(conn: PgConnection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(b"migrate"),))
            await postgres_migrate(conn, part, migrations)

        await self.write(op)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.pool.close()

    async def write(self, op: Operation[T]) -> T:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        for attempt in range(RETRIES + 1):
            try:
                async with self.pool.acquire() as raw:
                    await raw.execute(_BEGIN)
                    try:
                        result = await op(PgConnection(raw))
                        await raw.execute("COMMIT")
                    except BaseException:
                        await _roll_back(raw)
                        raise
                self.batches += 1
                self.operations += 1
                self.last_write = time.monotonic()
                if self.on_batch is not None:
                    self.on_batch(1)
                return result
            except _RETRYABLE as error:
                if attempt == RETRIES:
                    raise StoreBusy(str(error)) from error
                self.retries += 1
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            except _BUSY as error:
                raise StoreBusy(str(error)) from error
        raise AssertionError("unreachable")

    async def committed(self) -> Committed:
        fence = f"SELECT pg_advisory_xact_lock({_WRITES})"
        try:
            async with self.pool.acquire() as raw, raw.transaction():
                await raw.execute(f"SET LOCAL lock_timeout = {FENCE_TIMEOUT_MS}")
                await raw.execute(fence)
                # READ COMMITTED: this statement's snapshot is taken under the fence.
                row = await raw.fetchrow(NEWEST_IDS_SQL)
        except _BUSY as error:
            raise StoreBusy(str(error)) from error
        return Committed(int(row[0]), int(row[1]))

    async def checkpoint(self, mode: str = "TRUNCATE") -> Checkpointed:
        # The server checkpoints its own log; nothing to empty from here.
        return Checkpointed(False, 0, 0)

    async def archive_batch(self, cutoff: str) -> int | None:
        from ledger.storage.archive import postgres_batch

        return await self.write(lambda conn: postgres_batch(conn, cutoff))

    async def compact(self, step_pages: int) -> Compacted:
        # Autovacuum reclaims dead rows for reuse; giving space back to the file system
        # (VACUUM FULL) locks tables and is the operator's call, not the bot's.
        return Compacted(False, 0)
