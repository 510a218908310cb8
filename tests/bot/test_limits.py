"""/limits: members' caps inside the server's pool, where agents may talk and the role
paid commands need. Refusals name the cap or the rule, and charge nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot.config import Config
from bot.front.replies import roles_of
from bot.front.standin import CommandRunner
from bot.services import Services
from tests.bot.conftest import GUILD, MANAGER, MEMBER, OWNER
from tests.bot.helpers import assert_mentions_disabled, text
from tests.bot.test_chat_threads import FakeChannel, FakeThread

ACCOUNT = f"guild:{GUILD}"
ROLE = 77
Make = Callable[..., CommandRunner]


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


@pytest.fixture
def manager(as_user: Make) -> CommandRunner:
    return as_user(MANAGER, manage=True)


@pytest.fixture
async def member(as_user: Make) -> CommandRunner:
    runner = as_user(MEMBER)
    await runner.run('/agent create name:Mia prompt:"A cheerful botanist"')
    return runner


async def _charged(services: Services) -> int:
    return sum(
        e.tokens_used for e in await services.ledger.history(ACCOUNT) if e.status == "charged"
    )


async def test_a_default_cap_refuses_with_the_cap_named_and_charges_nothing(
    manager: CommandRunner, member: CommandRunner, services: Services, fake_openai: Any
) -> None:
    sent = await manager.run("/limits default amount:8000 reason:fair")
    assert "Each member may spend 8,000 tokens a month." in text(sent)
    assert all(s.ephemeral for s in sent)

    assert "✅ Avatar generated" in text(await member.run("/avatar generate agent:Mia"))
    calls = len(fake_openai.requests)
    sent = await member.run("/avatar generate agent:Mia")

    resets = (await services.ledger.balance(ACCOUNT)).period_end
    assert (
        "You have used 5,000 of the 8,000 tokens this server gives each member this month; "
        f"it resets {resets:%B} {resets.day}, {resets.year}." in text(sent)
    )
    assert len(fake_openai.requests) == calls  # no API call
    assert await _charged(services) == 5_000
    assert (await services.ledger.balance(ACCOUNT)).tokens_held == 0
    assert_mentions_disabled(sent)
    # The rest of the server still spends from the pool.
    await services.ledger.commit(
        await services.ledger.reserve(ACCOUNT, 7_000, "chat", OWNER), 7_000
    )


async def test_member_cap_beats_role_cap_beats_default(
    manager: CommandRunner, as_user: Make, services: Services
) -> None:
    await manager.run("/limits default amount:1000")
    await manager.run(f"/limits role role:<@&{ROLE}> amount:20000")
    await manager.run(f"/limits member member:<@{MEMBER}> amount:3000")

    promoted = as_user(MEMBER + 10, roles=[5, ROLE])  # lowest first, as Discord lists them
    assert roles_of(promoted.user, GUILD) == (ROLE, 5)  # highest first
    cap = (await services.ledger.member_spending(ACCOUNT, MEMBER, [ROLE])).cap
    assert cap is not None and (cap.scope, cap.tokens) == ("member", 3_000)
    cap = (await services.ledger.member_spending(ACCOUNT, MEMBER + 10, [ROLE, 5])).cap
    assert cap is not None and (cap.scope, cap.tokens) == ("role", 20_000)

    shown = text(await manager.run("/limits show"))
    assert f"<@{MEMBER}>: 3,000" in shown
    assert f"<@&{ROLE}>: 20,000" in shown
    assert "Each member (default): 1,000" in shown

    sent = await manager.run(f"/limits clear member:<@{MEMBER}>")
    assert f"Cleared <@{MEMBER}>: 3,000" in text(sent)
    sent = await manager.run("/limits clear")
    assert "Cleared Each member (default): 1,000" in text(sent)
    assert [c.scope for c in await services.ledger.caps(ACCOUNT)] == ["role"]


async def test_a_role_cap_reaches_the_reserve_through_the_members_roles(
    manager: CommandRunner, as_user: Make, services: Services, fake_openai: Any
) -> None:
    await manager.run("/limits default amount:0")
    await manager.run(f"/limits role role:<@&{ROLE}> amount:6000")
    plain = as_user(MEMBER)
    await plain.run('/agent create name:Mia prompt:"A cheerful botanist"')
    assert "this server gives each member" in text(await plain.run("/avatar generate agent:Mia"))
    trusted = as_user(MEMBER, roles=[ROLE])
    assert "✅ Avatar generated" in text(await trusted.run("/avatar generate agent:Mia"))
    sent = await trusted.run("/avatar generate agent:Mia")
    assert f"this server gives members with the <@&{ROLE}> role" in text(sent)
    assert await _charged(services) == 5_000


async def test_only_managers_change_limits(member: CommandRunner, services: Services) -> None:
    sent = await member.run("/limits default amount:10")
    assert "Only members with Manage Server" in text(sent)
    assert await services.ledger.caps(ACCOUNT) == []
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT COUNT(*) FROM journal WHERE action LIKE 'cap%'"
    )
    assert rows[0][0] == 0


async def test_every_cap_change_is_journaled_with_its_actor(
    manager: CommandRunner, services: Services
) -> None:
    await manager.run(f"/limits member member:<@{MEMBER}> amount:500 reason:noisy")
    await manager.run(f"/limits clear member:<@{MEMBER}>")
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT action, old_value, new_value, actor, reason FROM journal"
        " WHERE action LIKE 'cap%' ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (f"cap_member:{MEMBER}", None, "500", f"user:{MANAGER}", "noisy"),
        (f"cap_member:{MEMBER}", "500", None, f"user:{MANAGER}", "/limits clear"),
    ]


async def test_dms_are_not_capped(
    manager: CommandRunner, as_user: Make, services: Services, fake_openai: Any
) -> None:
    await manager.run("/limits default amount:0")
    dm = as_user(MEMBER, guild_id=None)
    await dm.run('/agent create name:Mia prompt:"A cheerful botanist"')
    assert "✅ Avatar generated" in text(await dm.run("/avatar generate agent:Mia"))
    assert "Limits apply to a server" in text(await dm.run("/limits default amount:5"))


async def test_chat_outside_the_chosen_channels_is_refused_and_uncharged(
    manager: CommandRunner, owner: CommandRunner, services: Services, fake_openai: Any
) -> None:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
    sent = await manager.run("/limits channels add channel:<#500>")
    assert "Agents talk in: <#500>" in text(sent)

    elsewhere = FakeChannel(600, webhooks_allowed=False)
    owner.channel = elsewhere
    calls = len(fake_openai.requests)
    sent = await owner.run('/chat agent:Nova message:"Hello"')
    assert "Agents talk only in <#500> on this server. Nothing was charged." in text(sent)
    assert elsewhere.threads_made == []  # refused before a thread was opened
    assert len(fake_openai.requests) == calls
    # A thread of another channel is no way around it.
    owner.channel = FakeThread(601, "Nova chat", elsewhere)
    assert "Agents talk only in" in text(await owner.run('/chat agent:Nova message:"Hi"'))
    assert await _charged(services) == 0

    allowed = FakeChannel(500, webhooks_allowed=False)
    owner.channel = allowed
    await owner.run('/chat agent:Nova message:"Hello"')
    assert len(allowed.threads_made) == 1
    assert await _charged(services) > 0

    await manager.run("/limits channels clear")
    owner.channel = elsewhere
    await owner.run('/chat agent:Nova message:"Hello again"')
    assert len(elsewhere.threads_made) == 1


async def test_paid_commands_need_the_required_role(
    manager: CommandRunner, as_user: Make, services: Services, fake_openai: Any
) -> None:
    sent = await manager.run(f"/limits require role:<@&{ROLE}>")
    assert f"Paid commands: <@&{ROLE}>" in text(sent)
    plain = as_user(MEMBER)
    await plain.run('/agent create name:Mia prompt:"A cheerful botanist"')  # free: allowed
    calls = len(fake_openai.requests)
    sent = await plain.run("/avatar generate agent:Mia")
    assert f"Paid commands on this server need the <@&{ROLE}> role. Nothing was charged." in text(
        sent
    )
    assert len(fake_openai.requests) == calls
    assert await _charged(services) == 0
    assert (await services.ledger.balance(ACCOUNT)).tokens_held == 0

    member_with_role = as_user(MEMBER, roles=[ROLE])
    assert "✅ Avatar generated" in text(await member_with_role.run("/avatar generate agent:Mia"))
    await manager.run("/limits require")
    assert "✅ Avatar generated" in text(await plain.run("/avatar generate agent:Mia"))


async def test_plain_messages_in_an_agents_thread_obey_the_rules_and_caps(
    manager: CommandRunner, owner: CommandRunner, bot: Any, services: Services, fake_openai: Any
) -> None:
    from types import SimpleNamespace

    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
    channel = FakeChannel(502, webhooks_allowed=False)
    owner.channel = channel
    await owner.run('/chat agent:Nova message:"Hi"')
    (thread,) = channel.threads_made
    cog = bot.get_cog("ChatCog")
    services.config.discord.message_content = True
    guild = SimpleNamespace(id=GUILD, owner_id=OWNER)

    def message(content: str, roles: list[Any] | None = None) -> Any:
        author = SimpleNamespace(id=MEMBER, bot=False, roles=roles or [])
        return SimpleNamespace(content=content, author=author, channel=thread, guild=guild)

    charged = await _charged(services)
    calls = fake_openai.count("chat")
    await manager.run("/limits channels add channel:<#700>")
    await cog.on_message(message("Still there?"))
    assert "Agents talk only in <#700>" in (channel.log[-1].content or "")
    await manager.run("/limits channels clear")

    await manager.run(f"/limits role role:<@&{ROLE}> amount:0")
    await cog.on_message(message("Still there?", [SimpleNamespace(id=ROLE, position=3)]))
    assert f"members with the <@&{ROLE}> role" in (channel.log[-1].content or "")
    assert fake_openai.count("chat") == calls
    assert await _charged(services) == charged
