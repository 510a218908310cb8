"""/chat in a server channel: a thread named after the agent, the answer posted as the
agent (a webhook with its avatar, or embeds without webhook permission), /chat and plain
messages in that thread continuing the same conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD, OWNER
from tests.bot.helpers import text
from tests.fakes.openai_server import _png

ACCOUNT = f"guild:{GUILD}"


@dataclass
class Posted:
    via: str  # "thread", "webhook"
    content: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)


class Denied(discord.Forbidden):
    def __init__(self) -> None:  # no HTTP response to describe: Missing Permissions
        Exception.__init__(self, "403 Forbidden")
        self.status = 403
        self.code = 50013


class FakeMessage:
    """A posted message: an edit changes what its entry in the log shows."""

    def __init__(self, posted: Posted, clock: Any = None) -> None:
        self.posted = posted
        self.edits = 0
        self.clock = clock
        self.edited_at: list[float] = []  # on `clock`, when the test gives one

    async def edit(self, content: str | None = None, **kwargs: Any) -> None:
        self.edits += 1
        if self.clock is not None:
            self.edited_at.append(self.clock())
        if content is not None:
            self.posted.content = content
        self.posted.kwargs.update(kwargs)


class FakeHook:
    name = "Agents"

    def __init__(self, log: list[Posted]) -> None:
        self.log = log
        self.refuse: discord.HTTPException | None = None
        self.clock: Any = None
        self.messages: list[FakeMessage] = []
        self.sent_at: list[float] = []

    async def send(self, content: str, **kwargs: Any) -> FakeMessage:
        if self.refuse is not None:
            raise self.refuse
        posted = Posted("webhook", content, kwargs)
        self.log.append(posted)
        self.messages.append(FakeMessage(posted, self.clock))
        if self.clock is not None:
            self.sent_at.append(self.clock())
        return self.messages[-1]

    def calls(self) -> list[float]:
        """When each send and edit went through this webhook, in order."""
        return sorted(self.sent_at + [t for m in self.messages for t in m.edited_at])


class FakeThread(discord.Thread):
    """A discord.Thread (so the cog's isinstance checks hold) that records what is sent."""

    def __init__(self, thread_id: int, name: str, parent: FakeChannel) -> None:
        self.id = thread_id
        self.name = name
        self._parent = parent
        self.log = parent.log

    @property
    def parent(self) -> Any:  # type: ignore[override]
        return self._parent

    async def send(self, content: str | None = None, **kwargs: Any) -> FakeMessage:  # type: ignore[override]
        posted = Posted("thread", content, kwargs)
        self.log.append(posted)
        return FakeMessage(posted)

    def typing(self) -> Any:  # type: ignore[override]
        return _Typing()


class _Typing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeChannel(discord.TextChannel):
    def __init__(self, channel_id: int, *, webhooks_allowed: bool) -> None:
        self.id = channel_id
        self.webhooks_allowed = webhooks_allowed
        self.log: list[Posted] = []
        self.threads_made: list[FakeThread] = []
        self.hooks: list[FakeHook] = []

    async def create_thread(self, *, name: str, **kwargs: Any) -> FakeThread:  # type: ignore[override]
        thread = FakeThread(9000 + len(self.threads_made), name, self)
        self.threads_made.append(thread)
        return thread

    async def webhooks(self) -> list[FakeHook]:  # type: ignore[override]
        if not self.webhooks_allowed:
            raise Denied()
        return list(self.hooks)

    async def create_webhook(self, *, name: str, **kwargs: Any) -> FakeHook:  # type: ignore[override]
        hook = FakeHook(self.log)
        self.hooks.append(hook)
        return hook


@pytest.fixture
async def nova(owner: CommandRunner, tmp_path: Any) -> AsyncIterator[None]:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
    avatar = StandInAttachment("nova.png", _png())
    await owner.invoke(["avatar", "upload"], {"agent": "Nova", "image": avatar})
    yield


def _no_mentions(posted: list[Posted]) -> None:
    for p in posted:
        mentions = p.kwargs.get("allowed_mentions")
        assert mentions is not None and not mentions.everyone and not mentions.users
        assert not mentions.roles


async def test_chat_in_a_channel_opens_a_thread_and_speaks_through_a_webhook(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any, nova: None
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    channel = FakeChannel(500, webhooks_allowed=True)
    owner.channel = channel
    fake_openai.chat_answer = "Pulsars are spinning neutron stars."

    sent = await owner.run('/chat agent:Nova message:"What is a pulsar? @everyone"')

    (thread,) = channel.threads_made
    assert thread.name == "Nova chat"
    assert f"<#{thread.id}>" in text(sent)  # the member is pointed at the thread
    by_hook = [p for p in channel.log if p.via == "webhook"]
    assert [p.content for p in by_hook] == ["Pulsars are spinning neutron stars."]
    assert by_hook[0].kwargs["username"] == "Nova"
    assert by_hook[0].kwargs["avatar_url"].startswith("https://bot.example/avatars/")
    assert by_hook[0].kwargs["thread"] is thread
    echoed = [p for p in channel.log if p.via == "thread"]
    assert "@everyone" in (echoed[0].content or "")  # shown, but never pinged:
    _no_mentions(channel.log)

    # /chat inside the thread continues the same conversation, with its history.
    owner.channel = thread
    fake_openai.chat_answer = "Magnetars have enormous magnetic fields."
    sent = await owner.run('/chat agent:Nova message:"And a magnetar?"')
    assert "Magnetars have enormous magnetic fields." in text(sent)
    contents = [m["content"] for m in fake_openai.completed("chat")[-1].body["messages"]]
    assert "Pulsars are spinning neutron stars." in contents
    assert len(channel.threads_made) == 1
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == fake_openai.reported_tokens(
        "chat"
    )


async def test_without_webhook_permission_the_agent_speaks_in_embeds(
    owner: CommandRunner, bot: AgentBot, fake_openai: Any, nova: None
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    channel = FakeChannel(501, webhooks_allowed=False)
    owner.channel = channel
    fake_openai.chat_answer = "Saturn's rings are ice."

    await owner.run('/chat agent:Nova message:"Rings?"')

    assert not [p for p in channel.log if p.via == "webhook"]
    embeds = [p.kwargs["embed"] for p in channel.log if "embed" in p.kwargs]
    assert [e.description for e in embeds] == ["Saturn's rings are ice."]
    assert embeds[0].author.name == "Nova"
    _no_mentions(channel.log)


async def test_plain_messages_in_the_thread_continue_when_message_content_is_on(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any, nova: None
) -> None:
    channel = FakeChannel(502, webhooks_allowed=False)
    owner.channel = channel
    fake_openai.chat_answer = "Hello, I am Nova."
    await owner.run('/chat agent:Nova message:"Hi"')
    (thread,) = channel.threads_made
    cog = bot.get_cog("ChatCog")
    assert cog is not None

    def message(content: str, *, is_bot: bool = False) -> Any:
        author = SimpleNamespace(id=2, bot=is_bot)
        return SimpleNamespace(
            content=content, author=author, channel=thread, guild=SimpleNamespace(id=GUILD)
        )

    services.config.discord.message_content = False
    await cog.on_message(message("ignored while message_content is off"))  # type: ignore[attr-defined]
    assert fake_openai.count("chat") == 1

    services.config.discord.message_content = True
    await cog.on_message(message("from another bot", is_bot=True))  # type: ignore[attr-defined]
    assert fake_openai.count("chat") == 1
    fake_openai.chat_answer = "Still Nova, still here."
    await cog.on_message(message("Are you there?"))  # type: ignore[attr-defined]
    assert fake_openai.count("chat") == 2
    contents = [m["content"] for m in fake_openai.completed("chat")[-1].body["messages"]]
    assert "Hi" in contents and "Are you there?" in contents
    embeds = [p.kwargs["embed"] for p in channel.log if "embed" in p.kwargs]
    assert embeds[-1].description == "Still Nova, still here."

    # Short on tokens: the thread is told so, nothing is asked of the API.
    balance = await services.ledger.balance(ACCOUNT)
    hold = await services.ledger.reserve(ACCOUNT, balance.available - 10, "chat")
    await cog.on_message(message("One more?"))  # type: ignore[attr-defined]
    assert fake_openai.count("chat") == 2
    refusal = channel.log[-1].kwargs["embed"]
    assert refusal.title == "❌ Insufficient Tokens"
    assert refusal.description.startswith("This chat message requires ")
    assert "You have 10 tokens remaining. Upgrade to Pro for 10M tokens!" in refusal.description
    await services.ledger.release(hold)
    assert await services.ledger.verify() == []


class TickingClock:
    """Time that moves a quarter second each time it is read: an answer streaming through
    the cog gets past its edit interval every few pieces, with no real waiting."""

    def __init__(self, step: float = 0.25) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


LONG = " ".join(f"Pulsar fact {i}: they spin fast." for i in range(40))


async def test_an_answer_through_the_webhook_streams_by_editing_its_message(
    owner: CommandRunner, bot: AgentBot, fake_openai: Any, nova: None
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    cog: Any = bot.get_cog("ChatCog")
    clock = TickingClock()
    cog.clock, cog.sleep = clock, clock.sleep
    channel = FakeChannel(503, webhooks_allowed=True)
    await cog.webhooks.get(channel)  # the channel's webhook, made once and kept
    (hook,) = channel.hooks
    hook.clock = clock
    owner.channel = channel
    fake_openai.chat_answer = LONG

    await owner.run('/chat agent:Nova message:"Tell me about pulsars"')

    (message,) = hook.messages  # one webhook message, grown in place
    assert message.posted.content == LONG  # the whole answer, in the end
    assert message.edits >= 3  # it streamed: edited as the text arrived
    gaps = [b - a for a, b in zip(message.edited_at, message.edited_at[1:], strict=False)]
    interval = bot.config.chat.edit_interval_seconds
    assert all(gap >= interval for gap in gaps), gaps  # at most one edit per interval
    assert not [p for p in channel.log if "embed" in p.kwargs]  # no fallback was needed


async def test_a_dm_answer_streams_by_editing_its_followup(
    as_user: Any, bot: AgentBot, fake_openai: Any
) -> None:
    cog: Any = bot.get_cog("ChatCog")
    clock = TickingClock()
    cog.clock, cog.sleep = clock, clock.sleep
    dm: CommandRunner = as_user(7, guild_id=None)
    await dm.run('/agent create name:Nova prompt:"A patient astronomer"')
    fake_openai.chat_answer = LONG

    sent = await dm.run('/chat agent:Nova message:"Tell me about pulsars"')

    (first,) = [s for s in sent if s.kind == "followup" and s.embeds and "Pulsar" in s.text()]
    edits = [s for s in sent if s.kind == "edit" and s.of is first]
    assert len(edits) >= 3  # the followup grew in place
    assert [len(e.text()) for e in edits] == sorted(len(e.text()) for e in edits)
    assert edits[-1].embeds[0].description == LONG
    assert first.embeds[0].author.name == "Nova"


async def test_answers_in_threads_of_one_channel_share_its_webhooks_budget(
    owner: CommandRunner, as_user: Any, bot: AgentBot, fake_openai: Any, nova: None
) -> None:
    bot.config.webhooks.public_url = "https://bot.example"
    cog: Any = bot.get_cog("ChatCog")
    clock = TickingClock(step=0.01)  # fine steps: the budget decides, not the grain
    cog.clock, cog.sleep = clock, clock.sleep
    channel = FakeChannel(504, webhooks_allowed=True)
    await cog.webhooks.get(channel)
    (hook,) = channel.hooks
    hook.clock = clock
    other = as_user(OWNER)
    owner.channel = other.channel = channel
    fake_openai.chat_answer = LONG

    await asyncio.gather(
        owner.run('/chat agent:Nova message:"Pulsars?"'),
        other.run('/chat agent:Nova message:"Pulsars, please?"'),
    )

    assert len(channel.threads_made) == 2 and len(hook.messages) == 2
    assert all(m.posted.content == LONG for m in hook.messages)  # both whole
    calls = hook.calls()
    settings = bot.config.chat
    # Two threads, one webhook: together within the channel's budget in any window.
    for i, start in enumerate(calls):
        within = [t for t in calls[i:] if t < start + settings.channel_window_seconds]
        assert len(within) <= settings.channel_edits, calls
