"""Costs that must not grow with the wrong thing: start-up does nothing whose cost grows
with the number of agents (the avatar sweep runs in the background, a while later);
deleting an agent finds its conversations by index, and every foreign key has an index."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from bot import services as services_module
from bot.config import Config
from bot.core import repository
from bot.core.ai import AIGateway
from bot.core.avatars.service import AvatarService
from bot.services import Services


async def test_start_up_leaves_the_avatar_sweep_to_the_background(
    app_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def slow_sweep(self: AvatarService) -> int:
        calls.append("sweep")
        started.set()
        await release.wait()
        return 0

    monkeypatch.setattr(AvatarService, "sweep_files", slow_sweep)
    monkeypatch.setattr(services_module, "TIDY_DELAY_SECONDS", 0)
    opened = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        assert calls == [] and opened.tidying is not None and not opened.tidying.done()
        await asyncio.wait_for(started.wait(), 10)  # then it starts, start-up long over
        assert calls == ["sweep"]
    finally:
        await opened.close()  # and close does not wait for a sweep in progress
    assert opened.tidying.cancelled()


async def test_the_background_sweep_deletes_old_unused_files(
    app_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services_module, "TIDY_DELAY_SECONDS", 0)
    folder_services = await Services.open(
        app_config, ai=AIGateway(app_config.openai, "k", strict=True)
    )
    try:
        assert folder_services.tidying is not None
        await folder_services.tidying  # nothing to delete yet
        folder = folder_services.avatars.folder
        folder.mkdir(parents=True, exist_ok=True)
        orphan = folder / "1-deadbeef0000.png"
        orphan.write_bytes(b"x")
        long_ago = time.time() - app_config.limits.hold_ttl_seconds - 60
        os.utime(orphan, (long_ago, long_ago))
    finally:
        await folder_services.close()
    reopened = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        assert reopened.tidying is not None
        await reopened.tidying
        assert not orphan.exists()
    finally:
        await reopened.close()


async def test_deleting_an_agent_finds_its_conversations_by_index(app_config: Config) -> None:
    opened = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        plan = await opened.ledger.store.reader.execute_fetchall(
            "EXPLAIN QUERY PLAN DELETE FROM conversations WHERE agent_id = 1"
        )
    finally:
        await opened.close()
    assert any("INDEX conversations_agent" in row[-1] for row in plan), [tuple(r) for r in plan]


async def test_every_foreign_key_is_found_by_an_index(app_config: Config) -> None:
    """A parent's delete, or a read of a parent's children, finds them by index: every
    foreign key column leads some index of its table (or its primary key)."""
    opened = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    missing: list[str] = []
    checked = 0
    try:
        reader = opened.ledger.store.reader
        tables = await reader.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
            " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '%_fts_%'"
        )
        for (table,) in tables:
            keys = await reader.execute_fetchall(f"PRAGMA foreign_key_list({table})")
            leading = set()
            for index in await reader.execute_fetchall(f"PRAGMA index_list({table})"):
                columns = await reader.execute_fetchall(f"PRAGMA index_info({index['name']})")
                leading |= {c["name"] for c in columns if c["seqno"] == 0}
            info = await reader.execute_fetchall(f"PRAGMA table_info({table})")
            leading |= {c["name"] for c in info if c["pk"] == 1}
            missing += [f"{table}.{k['from']}" for k in keys if k["from"] not in leading]
            checked += len(keys)
    finally:
        await opened.close()
    assert missing == [] and checked >= 10


async def _document(services: Services, chunks: int) -> tuple[int, int]:
    repo = services.repo

    async def op(conn: Any) -> tuple[int, int]:
        agent = await repo.insert_agent_in(conn, "guild:1", "Nova", "You are Nova.", "7")
        rows = [(i, 1, "", False, f"chunk {i}", b"\0" * 16) for i in range(chunks)]
        document = await repo.insert_document_in(conn, agent.id, "a.txt", "text", 1, 9, "7", rows)
        return agent.id, document

    return await services.ledger.store.write(op)


async def _orphans(services: Services) -> int:
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT COUNT(*) FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)"
    )
    return int(rows[0][0])


async def test_a_document_delete_killed_midway_leaves_no_orphan_chunks(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "CHUNK_DELETE_BATCH", 4)
    agent_id, document = await _document(services, 30)
    store = services.ledger.store
    real_write, writes = store.write, 0

    async def dies_at_the_third_write(op: Any) -> Any:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise KeyboardInterrupt  # as a process killed between two transactions
        return await real_write(op)

    monkeypatch.setattr(store, "write", dies_at_the_third_write)
    with pytest.raises(KeyboardInterrupt):
        await services.repo.delete_document(agent_id, document)
    monkeypatch.setattr(store, "write", real_write)

    assert await _orphans(services) == 0
    assert [d.id for d in await services.repo.documents(agent_id)] == [document]
    assert await services.repo.chunk_count("guild:1") == 30 - 2 * 4

    await services.repo.delete_document(agent_id, document)  # deleting again finishes
    assert await services.repo.documents(agent_id) == []
    assert await services.repo.chunk_count("guild:1") == 0


async def test_paid_calls_pass_between_the_batches_of_a_delete(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "CHUNK_DELETE_BATCH", 5)
    agent_id, _ = await _document(services, 100)
    done: list[str] = []

    async def delete() -> None:
        await services.repo.delete_agent(agent_id)
        done.append("delete")

    async def pay() -> None:
        hold = await services.ledger.reserve("guild:1", 10, "chat")
        await services.ledger.commit(hold, 5)
        done.append("paid")

    await asyncio.gather(delete(), pay())
    assert done == ["paid", "delete"]  # it waited for a batch or two, not for 20 of them
    assert await services.repo.agent_by_id(agent_id) is None
    assert await _orphans(services) == 0 and await services.repo.chunk_count("guild:1") == 0


async def test_secure_delete_is_off_unless_the_configuration_asks(app_config: Config) -> None:
    for wanted in (False, True):
        storage = app_config.storage.model_copy(update={"secure_delete": wanted})
        config = app_config.model_copy(update={"storage": storage})
        opened = await Services.open(config, ai=AIGateway(config.openai, "k", strict=True))
        try:
            rows = await opened.ledger.store.reader.execute_fetchall("PRAGMA secure_delete")
            assert rows[0][0] == int(wanted)
            raw = opened.ledger.store.writer.raw
            assert raw.execute("PRAGMA secure_delete").fetchone()[0] == int(wanted)
        finally:
            await opened.close()


def test_the_bot_process_runs_blas_on_one_thread() -> None:
    import subprocess
    import sys

    from tests.children import bot_env

    env = {k: v for k, v in bot_env().items() if not k.endswith("_NUM_THREADS")}
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import bot.__main__, os; print(os.environ['OPENBLAS_NUM_THREADS'])",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert shown.strip() == "1"
