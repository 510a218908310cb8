"""`python -m bot storage copy --to postgresql://...`: a populated SQLite database lands in
an empty PostgreSQL one with the same balances, histories, holds and embeddings, verified
clean on both sides; a non-empty target is refused."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from bot.cli import main
from bot.core.repository import Repository
from ledger import Ledger, ManualClock
from tests.stores import create_schema, drop_schema, with_schema

ACCOUNTS = ["guild:1", "user:2"]


@pytest.fixture
def target() -> Iterator[str]:
    """An empty PostgreSQL schema, made and dropped around a synchronous test."""
    schema = asyncio.run(create_schema())
    try:
        yield with_schema(schema)
    finally:
        asyncio.run(drop_schema(schema))


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("BOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bot.db"
    monkeypatch.setenv("BOT_STORAGE__DATABASE", str(path))
    asyncio.run(_populate(path))
    return path


async def _populate(path: Path) -> None:
    clock = ManualClock()
    async with await Ledger.open(path, clock=clock) as ledger:
        repo = Repository(ledger.store)
        await repo.migrate()
        for n in range(12):
            account = ACCOUNTS[n % 2]
            hold = await ledger.reserve(account, 900, "chat", user_id=n, model="gpt-5.4-mini")
            if n % 3 == 2:
                await ledger.release(hold, "the API failed")
            else:
                await ledger.commit(hold, 300 + n)
        await ledger.grant("user:2", 5_000, "cli:op", "thanks")
        await ledger.set_plan(
            "guild:1", "pro", clock.now() + timedelta(days=20), actor="cli:op", reason="paid"
        )
        clock.advance(days=40)  # a fresh period for one of them
        await ledger.commit(await ledger.reserve("user:2", 100, "chat"), 80)
        await ledger.reserve("guild:1", 700, "chat", user_id=7)  # still pending
        vector = np.arange(4, dtype="<f4").tobytes()

        async def store(conn: object) -> None:
            agent = await repo.insert_agent_in(conn, "guild:1", "Ada", "be kind", "7")  # type: ignore[arg-type]
            await repo.insert_document_in(
                conn,  # type: ignore[arg-type]
                agent.id,
                "notes.txt",
                "text",
                1,
                12,
                "7",
                [
                    (0, 1, "page 1", False, "hello", vector),
                    (1, 1, "page 1", False, "world", vector[::-1]),
                ],
            )

        await ledger.store.write(store)


async def _state(database: str) -> tuple[object, ...]:
    async with await Ledger.open(database, kind="test") as ledger:
        balances = [await ledger.balance(a) for a in ACCOUNTS]
        histories = [
            [
                (e.id, e.operation_type, e.tokens_used, e.status, e.created_at)
                for e in await ledger.history(a, 100)
            ]
            for a in ACCOUNTS
        ]
        holds = await ledger.store.reader.execute_fetchall(
            "SELECT hold_id, status, amount, charged FROM holds ORDER BY rowid"
        )
        chunks = await ledger.store.reader.execute_fetchall(
            "SELECT idx, text, embedding FROM chunks ORDER BY id"
        )
        return (
            balances,
            histories,
            [tuple(r) for r in holds],
            [(r[0], r[1], bytes(r[2])) for r in chunks],
        )


def test_a_copy_has_the_same_balances_histories_holds_and_embeddings(
    source: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = asyncio.run(_state(str(source)))

    assert main(["storage", "copy", "--to", target]) == 0

    out = capsys.readouterr().out
    assert "verify source: clean" in out and "verify target: clean" in out
    assert asyncio.run(_state(target)) == before

    async def more_on_the_copy() -> None:  # ids go on after the copied ones
        async with await Ledger.open(target) as ledger:
            await ledger.commit(await ledger.reserve("user:2", 10, "chat"), 10)
            assert await ledger.verify(full=True) == []

    asyncio.run(more_on_the_copy())


def test_a_target_with_rows_is_refused(
    source: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["storage", "copy", "--to", target]) == 0
    capsys.readouterr()

    assert main(["storage", "copy", "--to", target]) == 1

    assert "copy only into an empty one" in capsys.readouterr().err
