"""The bot process's pieces that need no Discord connection: its commands' payloads,
intents, invite URL, and the sidecar serving avatars."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import discord
import pytest

from bot import heap
from bot.config import Config
from bot.core import tokens
from bot.front.app import PERMISSIONS, AgentBot, intents_for, invite_url
from bot.front.standin import CommandRunner
from bot.services import Services


async def test_every_command_has_a_valid_payload(bot: AgentBot) -> None:
    commands = bot.tree.get_commands()
    assert {c.name for c in commands} >= {
        "agent",
        "avatar",
        "docs",
        "chat",
        "tokens",
        "upgrade",
        "admin",
    }
    for command in commands:
        payload = command.to_dict(bot.tree)
        assert 1 <= len(payload["description"]) <= 100
        for option in payload.get("options", []):
            assert 1 <= len(option["description"]) <= 100


async def test_admin_group_is_hidden_from_members_by_default(bot: AgentBot) -> None:
    admin = bot.tree.get_command("admin")
    assert admin is not None
    assert admin.default_permissions == discord.Permissions(administrator=True)


def test_intents_are_minimal(app_config: Config) -> None:
    intents = intents_for(app_config)
    assert intents.guilds and not intents.message_content and not intents.members
    app_config.discord.message_content = True
    assert intents_for(app_config).message_content


def test_invite_url_has_exactly_the_scopes_and_permissions() -> None:
    url = invite_url(123)
    assert "scope=bot+applications.commands" in url and f"permissions={PERMISSIONS.value}" in url
    assert not PERMISSIONS.administrator and not PERMISSIONS.mention_everyone


async def test_sidecar_serves_avatars_by_unguessable_name_only(
    app_config: Config, services: Services, owner: CommandRunner
) -> None:
    """Issue 10 finding 12: `/avatars/{agent id}.png` served anyone's avatar."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        app_config.webhooks.port = s.getsockname()[1]
    app_config.webhooks.public_url = "https://bot.example"
    bot = AgentBot(app_config, services)
    await bot.load_cogs()
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    await owner.run("/avatar generate agent:Nova")
    agent: Any = await services.repo.agent("guild:1000", "Nova")
    first, _ = bot.avatar_of(agent)
    assert first is not None and first.startswith("https://bot.example/avatars/")
    name = first.rsplit("/", 1)[1]
    assert str(agent.id) not in name.split(".")[0].split("-") and len(name) >= 24 + 4
    runner = await bot._start_sidecar()
    try:
        base = f"http://127.0.0.1:{app_config.webhooks.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/avatars/{name}") as response:
                assert response.status == 200 and (await response.read()).startswith(b"\x89PNG")
            for guess in (f"{agent.id}.png", "1.png", "999999.png", "..%2Fbot.db"):
                async with http.get(f"{base}/avatars/{guess}") as response:
                    assert response.status == 404, guess
            await owner.run("/avatar generate agent:Nova")  # a new version: a new URL
            agent = await services.repo.agent("guild:1000", "Nova")
            second, _ = bot.avatar_of(agent)
            assert second is not None and second != first
            async with http.get(f"{base}/avatars/{second.rsplit('/', 1)[1]}") as response:
                assert response.status == 200
            async with http.get(f"{base}/avatars/{name}") as response:
                assert response.status == 404  # the replaced file is gone
            async with http.get(f"{base}/healthz") as response:
                assert (await response.json())["database"] is True
    finally:
        await runner.cleanup()


async def test_closing_twice_is_harmless(app_config: Config) -> None:
    services = await Services.open(app_config)
    bot = AgentBot(app_config, services)
    await bot.load_cogs()
    await bot.close()
    await bot.close()  # a signal, then `async with`'s exit
    assert services.ledger.store._task is None


async def test_start_up_freezes_the_heap_once_everything_is_loaded(
    app_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`setup_hook` (the start path of `run`) ends by freezing what start-up built, after
    the cogs and the tokenizers are loaded: a later full collection skips them."""
    services = await Services.open(app_config)
    bot = AgentBot(app_config, services)
    loaded: list[str] = []
    seen: list[tuple[int, list[str]]] = []

    def encoding(model: str) -> Any:
        loaded.append(model)
        return tokens.encoding(model)

    def freeze() -> None:  # not the real one: the test process's heap stays as it is
        seen.append((len(bot.cogs), list(loaded)))

    async def owners() -> None:
        return None

    async def sidecar() -> None:
        return None

    async def not_lead(name: str) -> bool:
        return False

    monkeypatch.setattr(heap, "encoding", encoding)
    monkeypatch.setattr(heap.gc, "freeze", freeze)
    monkeypatch.setattr(bot, "_load_owners", owners)
    monkeypatch.setattr(bot, "_start_sidecar", sidecar)
    monkeypatch.setattr(services.ledger, "start_maintenance", lambda: None)
    monkeypatch.setattr(services.ledger, "lead", not_lead)
    try:
        await bot.setup_hook()
    finally:
        await bot.close()
    assert len(seen) == 1  # frozen once, with every cog and tokenizer already loaded
    cogs, models = seen[0]
    assert cogs >= 5
    assert {app_config.openai.chat_model, app_config.openai.embedding_model} <= set(models)
