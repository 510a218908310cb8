"""Cursors over rows already fetched, shared by the stores whose drivers fetch eagerly.

asyncpg and the SQLite reader pool both hand back every row of a statement at once; the
ledger still reads them through the Cursor protocol, so one small class serves both.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class FetchedCursor:
    """The Cursor protocol over a list of rows: fetchone, fetchall and async iteration."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    async def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[Any]:
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows

    def __aiter__(self) -> FetchedCursor:
        return self

    async def __anext__(self) -> Any:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row


class PendingCursor:
    """What `execute` returns: await it, or `async with` it, for its cursor."""

    def __init__(self, run: Coroutine[Any, Any, FetchedCursor]) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, FetchedCursor]:
        return self._run.__await__()

    async def __aenter__(self) -> FetchedCursor:
        return await self._run

    async def __aexit__(self, *exc: object) -> None:
        return None
