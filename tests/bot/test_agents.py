"""Agent rules: names, limits per plan, who may edit and delete; replies never ping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.config import Config
from bot.core.metering import Actor
from bot.errors import InvalidInput
from bot.front.standin import CommandRunner, UsageError
from bot.services import Services
from tests.bot.conftest import GUILD, MANAGER, MEMBER
from tests.bot.helpers import assert_mentions_disabled, text


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


async def test_create_list_info(owner: CommandRunner) -> None:
    sent = await owner.run('/agent create name:Nova prompt:"You are a patient astronomer"')
    assert "Created **Nova**" in text(sent)
    sent = await owner.run("/agent list")
    assert "Nova" in text(sent) and sent[-1].ephemeral
    sent = await owner.run("/agent info name:nova")  # any case finds it
    assert "patient astronomer" in text(sent)


async def test_create_without_prompt_opens_a_modal(
    owner: CommandRunner, services: Services
) -> None:
    sent = await owner.invoke(["agent", "create"], {"name": "Vega"})
    assert sent[0].kind == "modal"
    assert "Vega" not in text(sent[1:]) or "Persona" in text(sent)  # empty form refused
    assert await services.repo.agent(f"guild:{GUILD}", "Vega") is None
    sent = await owner.invoke(
        ["agent", "create"], {"name": "Vega", "prompt": "Bright and cheerful"}
    )
    assert "Created **Vega**" in text(sent)


@pytest.mark.parametrize(
    "name",
    [
        "@everyone",
        "<@123>",
        "**bold**",
        "zero\u200bwidth",
        "right\u202eleft",
        "two  spaces",
        "under_score",
        "`code`",
        " ",
    ],
)
async def test_bad_names_are_refused(owner: CommandRunner, services: Services, name: str) -> None:
    sent = await owner.invoke(["agent", "create"], {"name": name, "prompt": "hello"})
    assert sent[-1].ephemeral and "❌" in text(sent)
    assert await services.repo.agents(f"guild:{GUILD}") == []
    assert_mentions_disabled(sent)


async def test_long_names_are_refused_by_discord_and_by_the_service(
    owner: CommandRunner, services: Services
) -> None:
    with pytest.raises(UsageError, match="at most 32 characters"):
        await owner.invoke(["agent", "create"], {"name": "a" * 33, "prompt": "hello"})
    with pytest.raises(InvalidInput, match="at most 32"):
        await services.agents.create(Actor(f"guild:{GUILD}", 1, GUILD), "a" * 33, "hello")


async def test_names_are_unique_whatever_the_case(owner: CommandRunner) -> None:
    await owner.run("/agent create name:Nova prompt:one")
    sent = await owner.run("/agent create name:NOVA prompt:two")
    assert "already an agent named NOVA" in text(sent)


async def test_free_plan_allows_three_agents(owner: CommandRunner, services: Services) -> None:
    for i in range(3):
        assert "Created" in text(await owner.run(f"/agent create name:A{i} prompt:p"))
    sent = await owner.run("/agent create name:A3 prompt:p")
    assert "limit of 3 agents" in text(sent) and "upgrade to Pro" in text(sent)
    assert len(await services.repo.agents(f"guild:{GUILD}")) == 3


async def test_limit_holds_under_concurrent_creates(
    owner: CommandRunner, services: Services
) -> None:
    await asyncio.gather(*(owner.run(f"/agent create name:C{i} prompt:p") for i in range(10)))
    assert len(await services.repo.agents(f"guild:{GUILD}")) == 3


async def test_pro_plan_is_unlimited(owner: CommandRunner, services: Services) -> None:
    await services.ledger.set_plan(f"guild:{GUILD}", "pro", actor="test", reason="test")
    for i in range(6):
        assert "Created" in text(await owner.run(f"/agent create name:P{i} prompt:p"))


async def test_only_creator_or_manager_edits_and_deletes(
    owner: CommandRunner, as_user: Callable[..., CommandRunner], services: Services
) -> None:
    await owner.run("/agent create name:Nova prompt:original")
    member = as_user(MEMBER)
    sent = await member.invoke(["agent", "edit"], {"name": "Nova", "prompt": "hijacked"})
    assert "Only Nova's creator or a member with Manage Server" in text(sent)
    sent = await member.run("/agent delete name:Nova confirm:yes")
    assert "Only Nova's creator" in text(sent)
    agent = await services.repo.agent(f"guild:{GUILD}", "Nova")
    assert agent is not None and agent.prompt == "original"

    manager = as_user(MANAGER, manage=True)
    sent = await manager.invoke(["agent", "edit"], {"name": "Nova", "prompt": "rewritten"})
    assert "Updated" in text(sent)
    agent = await services.repo.agent(f"guild:{GUILD}", "Nova")
    assert agent is not None and agent.prompt == "rewritten"
    assert "Deleted" in text(await manager.run("/agent delete name:Nova confirm:yes"))
    assert await services.repo.agent(f"guild:{GUILD}", "Nova") is None


async def test_agents_belong_to_their_account(
    owner: CommandRunner, as_user: Callable[..., CommandRunner]
) -> None:
    await owner.run("/agent create name:Nova prompt:p")
    in_dm = as_user(MEMBER, guild_id=None)
    assert "No agent named Nova" in text(await in_dm.run("/agent info name:Nova"))
    other_server = as_user(MEMBER, guild_id=GUILD + 1)
    assert "No agent named Nova" in text(await other_server.run("/agent info name:Nova"))


async def test_persona_with_mentions_is_echoed_without_pinging(owner: CommandRunner) -> None:
    await owner.run('/agent create name:Nova prompt:"Hi @everyone and <@&42> and <@7>"')
    sent = await owner.run("/agent info name:Nova")
    assert "@everyone" in text(sent)
    assert_mentions_disabled(sent)


async def test_autocomplete_offers_only_this_accounts_agents(
    owner: CommandRunner, as_user: Callable[..., CommandRunner], services: Services
) -> None:
    for i in range(3):
        await owner.run(f"/agent create name:Star{i} prompt:p")
    await as_user(MEMBER, guild_id=GUILD + 1).run("/agent create name:Starx prompt:p")
    names = await services.agents.names(Actor(f"guild:{GUILD}", 1, GUILD), "star")
    assert names == ["Star0", "Star1", "Star2"]


async def test_a_persona_of_invisible_characters_only_is_empty(owner: CommandRunner) -> None:
    sent = await owner.run('/agent create name:Ghost prompt:"\u200b\u2060\u202e \u200d"')
    assert "cannot be empty" in text(sent)
    assert "Ghost" not in text(await owner.run("/agent list"))


async def test_an_unknown_name_is_echoed_only_when_it_could_be_a_name(
    owner: CommandRunner,
) -> None:
    assert "No agent named Nobody here." in text(await owner.run("/agent info name:Nobody"))
    sent = await owner.run('/agent info name:"**@everyone** <@123>"')
    assert "No agent by that name here." in text(sent)
    assert "@everyone" not in text(sent) and "<@123>" not in text(sent)
