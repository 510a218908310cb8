"""One account's work never lands in, or is read from, another account's agent: ids are
never reused, every commit checks that its agent still exists in the actor's account, and
retrieval reads chunks by agent and account under a per-agent version (issue 10,
findings 3 and 4)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.config import Config
from bot.core.ai import AIGateway
from bot.core.metering import Actor
from bot.core.repository import APP_MIGRATIONS, Repository
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from ledger.storage.sqlite import SqliteStore as Store
from tests.bot.helpers import text

GUILD_A, GUILD_B = 1000, 2000
OWNER_B = 20
SECRET = "The launch code of server A is swordfish and nobody else may read it."
PUBLIC = "Server B keeps notes about gardening, tomatoes and compost heaps."


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py): two processes
    on PostgreSQL must invalidate each other's caches as they do on one SQLite file."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


def _actor(guild: int, user: int) -> Actor:
    return Actor(f"guild:{guild}", user, guild, can_manage=True)


async def _agent_rows(services: Services) -> list[tuple[int, str, str | None]]:
    rows = await services.repo.store.reader.execute_fetchall(
        "SELECT id, account_id, avatar_path FROM agents ORDER BY id"
    )
    return [(int(r[0]), r[1], r[2]) for r in rows]


async def test_work_in_flight_for_a_deleted_agent_never_lands_in_a_new_one(
    owner: CommandRunner,
    as_user: Any,
    services: Services,
    fake_openai: Any,
) -> None:
    """The repro: A starts an upload and an avatar generation, deletes the agent; B creates
    one (which, without AUTOINCREMENT, took the deleted id). A's work must land nowhere,
    A is told and pays nothing, B's agent stays empty."""
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
    (deleted_id, _, _), *_ = await _agent_rows(services)
    embeddings = fake_openai.gate("embeddings")
    images = fake_openai.gate("images")
    upload = asyncio.ensure_future(
        owner.invoke(
            ["docs", "upload"],
            {"agent": "Nova", "file": StandInAttachment("secret.txt", SECRET.encode())},
        )
    )
    avatar = asyncio.ensure_future(owner.run("/avatar generate agent:Nova"))
    await fake_openai.received("embeddings")
    await fake_openai.received("images")
    await owner.run("/agent delete name:Nova confirm:yes")
    other = as_user(OWNER_B, guild_id=GUILD_B)
    await other.run('/agent create name:Orion prompt:"A gardener"')
    embeddings.set()
    images.set()
    told = text(await upload) + "\n" + text(await avatar)

    assert told.count("deleted while this was running") == 2, told
    rows = await _agent_rows(services)
    assert [(account, path) for _, account, path in rows] == [(f"guild:{GUILD_B}", None)]
    assert rows[0][0] > deleted_id  # never reused
    stored = await services.repo.store.reader.execute_fetchall(
        "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)"
    )
    assert tuple(stored[0]) == (0, 0)
    for guild in (GUILD_A, GUILD_B):
        balance = await services.ledger.balance(f"guild:{guild}")
        assert (balance.tokens_used, balance.tokens_held) == (0, 0)
    assert await services.ledger.verify() == []


async def test_ids_are_never_reused_after_the_newest_row_is_deleted(services: Services) -> None:
    actor = _actor(GUILD_A, 1)
    first = await services.agents.create(actor, "Nova", "An astronomer")
    await services.agents.delete(actor, "Nova")
    second = await services.agents.create(actor, "Nova", "An astronomer")
    assert second.id > first.id
    if services.repo.store.dialect != "sqlite":
        return  # PostgreSQL's identity columns never hand an id out twice
    for table in ("agents", "documents", "chunks", "conversations"):
        rows = await services.repo.store.reader.execute_fetchall(
            "SELECT sql FROM sqlite_master WHERE name = ?", (table,)
        )
        assert "AUTOINCREMENT" in rows[0][0], table


async def test_the_autoincrement_migration_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await Store.open(path)
    try:
        saved = APP_MIGRATIONS[:]
        APP_MIGRATIONS[:] = saved[:1]  # the database as the first release left it
        try:
            await Repository(store).migrate()
        finally:
            APP_MIGRATIONS[:] = saved

        async def fill(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO agents (id, account_id, name, name_key, prompt, creator_id,"
                " created_at, updated_at) VALUES (7, 'guild:1', 'A', 'a', 'p', '1', 't', 't')"
            )
            await conn.execute(
                "INSERT INTO documents (id, agent_id, name, kind, pages, chunks, tokens,"
                " uploader_id, created_at) VALUES (3, 7, 'd', 'text', 1, 1, 5, '1', 't')"
            )
            await conn.execute(
                "INSERT INTO chunks (id, document_id, agent_id, idx, page, text, embedding)"
                " VALUES (9, 3, 7, 0, 1, 'hello', x'00000000')"
            )
            await conn.execute(
                "INSERT INTO conversations (id, thread_key, agent_id, account_id, created_at)"
                " VALUES (4, 'k', 7, 'guild:1', 't')"
            )
            await conn.execute(
                "INSERT INTO turns (conversation_id, role, content, tokens, created_at)"
                " VALUES (4, 'user', 'hi', 3, 't')"
            )

        await store.write(fill)
        await Repository(store).migrate()
        reader = store.reader
        ids = await reader.execute_fetchall(
            "SELECT (SELECT group_concat(id) FROM agents), (SELECT group_concat(id) FROM"
            " documents), (SELECT group_concat(id) FROM chunks), (SELECT group_concat(id)"
            " FROM conversations), (SELECT COUNT(*) FROM turns)"
        )
        assert tuple(ids[0]) == ("7", "3", "9", "4", 1)
        schemas = await reader.execute_fetchall(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN"
            " ('agents', 'documents', 'chunks', 'conversations')"
        )
        assert len(schemas) == 4 and all("AUTOINCREMENT" in r[0] for r in schemas)
        indexes = await reader.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name IN ('documents', 'chunks', 'conversations', 'turns')"
        )
        assert {r[0] for r in indexes} >= {
            "documents_agent",
            "chunks_agent",
            "chunks_document",
            "conversations_agent",
            "turns_conversation",
        }
        assert await reader.execute_fetchall("PRAGMA foreign_key_check") == []
    finally:
        await store.close()
    # The cascades still hold after the rebuild: deleting the agent takes everything.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM agents")
        counts = conn.execute(
            "SELECT (SELECT COUNT(*) FROM documents) + (SELECT COUNT(*) FROM chunks)"
            " + (SELECT COUNT(*) FROM conversations) + (SELECT COUNT(*) FROM turns)"
        ).fetchone()
    assert counts == (0,)


async def test_a_second_process_sees_every_change_and_never_another_accounts_text(
    app_config: Config, services: Services, fake_openai: Any
) -> None:
    """Two service instances on one database: the first caches an agent's chunks, the
    second deletes that agent and gives its documents to a new agent of another account.
    The first must never answer from the cache or the chunks of the deleted agent."""
    other = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        a, b = _actor(GUILD_A, 1), _actor(GUILD_B, OWNER_B)
        await services.agents.create(a, "Nova", "An astronomer")
        await services.documents.upload(a, "Nova", "secret.txt", SECRET.encode())
        nova = await services.agents.get(a, "Nova")
        query = (await services.ai.embed([SECRET])).vectors[0]
        cached = await services.retriever.top_k(a.account_id, nova.id, query)
        assert cached and cached[0].text == SECRET  # now in the first process's cache

        await other.agents.delete(a, "Nova")
        assert await services.retriever.top_k(a.account_id, nova.id, query) == []
        orion = await other.agents.create(b, "Orion", "A gardener")
        await other.documents.upload(b, "Orion", "notes.txt", PUBLIC.encode())

        mine = (await services.ai.embed([PUBLIC])).vectors[0]
        hits = await services.retriever.top_k(b.account_id, orion.id, mine)
        assert [h.text for h in hits] == [PUBLIC]
        assert abs(hits[0].score - 1.0) < 1e-5
        # Asked under the wrong account, the same agent's chunks are not read at all.
        assert await services.retriever.top_k(a.account_id, orion.id, mine) == []
        assert not await services.retriever.has_chunks(a.account_id, orion.id)
        answer = await services.chat.ask(b, "Orion", "thread-1", PUBLIC)
        assert SECRET not in " ".join(h.text for h in answer.sources)
    finally:
        await other.close()


async def test_a_document_change_in_another_process_bumps_the_version(
    app_config: Config, services: Services
) -> None:
    other = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        a = _actor(GUILD_A, 1)
        nova = await services.agents.create(a, "Nova", "An astronomer")
        await services.documents.upload(a, "Nova", "one.txt", SECRET.encode())
        query = (await services.ai.embed([PUBLIC])).vectors[0]
        before = await services.retriever.top_k(a.account_id, nova.id, query)
        assert [h.text for h in before] == [SECRET]
        await other.documents.remove(a, "Nova", "one.txt")
        await other.documents.upload(a, "Nova", "two.txt", PUBLIC.encode())
        after = await services.retriever.top_k(a.account_id, nova.id, query)
        assert [h.text for h in after] == [PUBLIC] and after[0].score > 0.999
        assert isinstance(query, np.ndarray)
    finally:
        await other.close()
