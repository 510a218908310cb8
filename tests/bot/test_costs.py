"""Costs that must not grow with the wrong thing: start-up does nothing whose cost grows
with the number of agents (the avatar sweep runs in the background, a while later);
deleting an agent finds its conversations by index."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from bot import services as services_module
from bot.config import Config
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
