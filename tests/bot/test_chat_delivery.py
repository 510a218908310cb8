"""Delivering a charged answer: webhook fallbacks (names Discord refuses, the 15-webhook
limit, a missing permission), the webhook cache, never "nothing was charged" after a
commit, plain messages under the server's command permissions, a thread deleted
mid-answer, a deleted agent's thread, and streaming turned off."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.core.chat import build_messages, count_delivered, estimate_prompt
from bot.core.metering import Actor
from bot.front.app import AgentBot
from bot.front.permissions import CHANNEL, ROLE, USER, CommandRules, Override
from bot.front.standin import CommandRunner
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import text
from tests.bot.test_chat_threads import ACCOUNT, FakeChannel, FakeThread, nova  # noqa: F401

pytestmark = pytest.mark.usefixtures("nova")


class _Response:
    def __init__(self, status: int, reason: str = "Bad Request") -> None:
        self.status = status
        self.reason = reason


def http_error(status: int, code: int = 0, message: str = "refused") -> discord.HTTPException:
    return discord.HTTPException(_Response(status), {"code": code, "message": message})


def _agent_posts(channel: FakeChannel) -> list[str]:
    """What the agent said in the thread, by webhook or embed (the echo excluded)."""
    posts = []
    for p in channel.log:
        if p.via == "webhook":
            posts.append(p.content or "")
        elif "embed" in p.kwargs:
            posts.append(p.kwargs["embed"].description or "")
    return posts


async def _charged(services: Services) -> list[Any]:
    return list(
        await services.ledger.store.reader.execute_fetchall(
            "SELECT tokens_used, details FROM token_usage"
            " WHERE account_id = ? AND operation_type = 'chat' AND status = 'charged'",
            (ACCOUNT,),
        )
    )


async def test_names_discord_refuses_for_webhooks_are_refused(owner: CommandRunner) -> None:
    for name in ("Discord Helper", "clyde", "MyDISCORDbot", "Clyde Jr"):
        sent = await owner.run(f'/agent create name:"{name}" prompt:"Helpful"')
        assert "Discord does not allow names containing" in text(sent), name
    assert "Created" in text(await owner.run('/agent create name:Disco prompt:"Helpful"'))


async def test_a_webhook_that_refuses_the_agent_falls_back_to_embeds(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    channel = FakeChannel(600, webhooks_allowed=True)
    owner.channel = channel
    await owner.run('/chat agent:Nova message:"First"')  # makes the channel's webhook
    channel.hooks[0].refuse = http_error(400, 50035, "Invalid Form Body: username")
    fake_openai.chat_answer = "Still answered, in an embed."

    sent = await owner.run('/chat agent:Nova message:"Second"')

    assert _agent_posts(channel)[-1] == "Still answered, in an embed."
    assert "nothing was charged" not in text(sent)
    assert "tokens used" in text(sent)


async def test_the_webhook_is_looked_up_once_per_channel(
    owner: CommandRunner, bot: AgentBot, fake_openai: Any
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    channel = FakeChannel(601, webhooks_allowed=True)
    listed = 0
    original = channel.webhooks

    async def counting() -> Any:
        nonlocal listed
        listed += 1
        return await original()

    channel.webhooks = counting  # type: ignore[method-assign]
    owner.channel = channel
    for n in range(3):
        await owner.run(f'/chat agent:Nova message:"Question {n}"')
    assert listed == 1 and len(channel.hooks) == 1
    assert len([p for p in channel.log if p.via == "webhook"]) == 3


async def test_fifteen_webhooks_or_no_permission_mean_embeds_said_once_in_the_log(
    owner: CommandRunner, bot: AgentBot, fake_openai: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    full = FakeChannel(602, webhooks_allowed=True)

    async def refuse(**kwargs: Any) -> Any:
        raise http_error(400, 30007, "Maximum number of webhooks reached (15)")

    full.create_webhook = refuse  # type: ignore[method-assign]
    denied = FakeChannel(603, webhooks_allowed=False)
    fake_openai.chat_answer = "Embeds it is."
    caplog.set_level(logging.WARNING, logger="bot.front.persona")
    for channel in (full, denied):
        owner.channel = channel
        await owner.run('/chat agent:Nova message:"One"')
        bot.get_cog("ChatCog").webhooks._hooks.clear()  # type: ignore[union-attr]  # asked again
        await owner.run('/chat agent:Nova message:"Two"')
        assert _agent_posts(channel) == ["Embeds it is."] * 2
        embed = next(p for p in channel.log if "embed" in p.kwargs).kwargs["embed"]
        assert embed.author.name == "Nova" and embed.author.icon_url.startswith("https://bot")
    said = [r.getMessage() for r in caplog.records]
    assert sum("maximum of 15 webhooks" in m for m in said) == 1
    assert sum("no Manage Webhooks permission" in m for m in said) == 1


async def test_after_the_commit_a_failed_post_says_it_was_charged_and_where_to_read_it(
    owner: CommandRunner, services: Services, fake_openai: Any
) -> None:
    channel = FakeChannel(604, webhooks_allowed=False)
    owner.channel = channel
    fake_openai.chat_answer = "An answer Discord will not take."
    refusing = FakeThread.send

    async def send(self: FakeThread, content: str | None = None, **kwargs: Any) -> Any:
        if "embed" in kwargs:
            raise http_error(500, 0, "Internal Server Error")
        return await refusing(self, content, **kwargs)

    FakeThread.send = send  # type: ignore[method-assign]
    try:
        sent = await owner.run('/chat agent:Nova message:"Hello"')
    finally:
        FakeThread.send = refusing  # type: ignore[method-assign]

    shown = text(sent)
    assert "nothing was charged" not in shown
    (charge,) = await _charged(services)
    assert f"charged ({charge[0]:,} tokens)" in shown and "/chat-history agent:Nova" in shown
    owner.channel = channel.threads_made[0]
    history = await owner.run("/chat-history agent:Nova")
    assert "An answer Discord will not take." in text(history)


def _message(thread: Any, content: str, user_id: int = 2, roles: tuple[int, ...] = ()) -> Any:
    author = SimpleNamespace(id=user_id, bot=False, roles=[SimpleNamespace(id=r) for r in roles])
    return SimpleNamespace(
        content=content, author=author, channel=thread, guild=SimpleNamespace(id=GUILD)
    )


async def _thread(owner: CommandRunner, services: Services) -> Any:
    channel = FakeChannel(700, webhooks_allowed=False)
    owner.channel = channel
    await owner.run('/chat agent:Nova message:"Hi"')
    services.config.discord.message_content = True
    return channel.threads_made[0]


async def test_plain_messages_pass_the_servers_command_permissions(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any
) -> None:
    thread = await _thread(owner, services)
    cog: Any = bot.get_cog("ChatCog")
    rules = CommandRules()

    async def fetch(guild: Any) -> CommandRules:
        return rules

    cog.fetch_rules = fetch
    asked = fake_openai.count("chat")
    used = (await services.ledger.balance(ACCOUNT)).tokens_used

    # @everyone may not use /chat (an override on the command): refused, uncharged.
    rules = CommandRules(command=(Override(GUILD, ROLE, False),))
    await cog.on_message(_message(thread, "Let me in"))
    assert "You don't have permission to use /chat here." in (thread.log[-1].content or "")
    # Not in this channel (an override on the whole application's channels).
    cog._rules.clear()
    rules = CommandRules(application=(Override(thread.parent.id, CHANNEL, False),))
    await cog.on_message(_message(thread, "And here?"))
    assert "permission" in (thread.log[-1].content or "")
    # Default member permissions the member lacks, and no override.
    cog._rules.clear()
    rules = CommandRules(default_member_permissions=discord.Permissions(manage_guild=True))
    await cog.on_message(_message(thread, "Now?"))
    assert fake_openai.count("chat") == asked
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == used

    # A role the member has is allowed, over the @everyone refusal: it goes through.
    cog._rules.clear()
    rules = CommandRules(command=(Override(GUILD, ROLE, False), Override(55, ROLE, True)))
    await cog.on_message(_message(thread, "With my role?", roles=(55,)))
    assert fake_openai.count("chat") == asked + 1
    # ...and a user override refusing them wins over their role.
    cog._rules.clear()
    rules = CommandRules(command=(Override(55, ROLE, True), Override(2, USER, False)))
    await cog.on_message(_message(thread, "Still me", roles=(55,)))
    assert fake_openai.count("chat") == asked + 1


async def test_deleting_the_thread_mid_answer_charges_what_was_generated_once(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any
) -> None:
    thread = await _thread(owner, services)
    cog: Any = bot.get_cog("ChatCog")
    before = len(await _charged(services))
    fake_openai.chat_answer = "Quasars are the bright cores of distant galaxies, " * 3
    fake_openai.stall_stream(after=3)
    task = asyncio.create_task(cog.on_message(_message(thread, "What is a quasar?")))
    while not any("Quasars" in p for p in _agent_posts(thread.parent)):
        await asyncio.sleep(0)  # until the answer shows in the thread
        assert not task.done()
    await cog.on_raw_thread_delete(SimpleNamespace(thread_id=thread.id))
    with pytest.raises(asyncio.CancelledError):
        await task
    await services.meter.drain()
    fake_openai.release()

    rows = await _charged(services)
    assert len(rows) == before + 1 and rows[-1][1] == "partial: cancelled"
    conversation = await services.repo.conversation(str(thread.id))
    turns = await services.repo.recent_turns(conversation.id)
    delivered = turns[-1].content
    assert delivered and fake_openai.requests[-1].streamed.startswith(delivered)
    agent = await services.repo.agent(ACCOUNT, "Nova")
    model = services.config.openai.chat_model
    prompt = estimate_prompt(build_messages(agent, [], turns[:-2], "What is a quasar?"), model)
    assert rows[-1][0] == prompt + count_delivered(delivered, model)
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_held == 0 and await services.ledger.verify() == []


async def test_a_deleted_agents_thread_says_so(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any
) -> None:
    thread = await _thread(owner, services)
    cog: Any = bot.get_cog("ChatCog")
    actor = Actor(ACCOUNT, 1, GUILD, can_manage=True)
    await services.agents.delete(actor, "Nova")
    asked = fake_openai.count("chat")

    await cog.on_message(_message(thread, "Hello?"))
    assert "This conversation's agent, Nova, was deleted." in (thread.log[-1].content or "")
    await owner.run('/agent create name:Vega prompt:"Another"')
    owner.channel = thread
    sent = await owner.run('/chat agent:Vega message:"And you?"')
    assert "Nova, was deleted" in text(sent)
    assert fake_openai.count("chat") == asked


async def test_with_streaming_off_the_answer_is_sent_once_whole(
    as_user: Any, services: Services, fake_openai: Any
) -> None:
    services.config.chat.stream = False
    dm = as_user(1, guild_id=None)
    await dm.run('/agent create name:Orion prompt:"A hunter"')
    fake_openai.chat_answer = "One whole answer. " * 30

    sent = await dm.run('/chat agent:Orion message:"Hi"')

    assert "stream" not in fake_openai.completed("chat")[-1].body
    assert [s.kind for s in sent] == ["defer", "followup", "followup"]
    assert sent[1].embeds[0].description == "One whole answer. " * 30
