"""/chat: talk with an agent. In a server channel it opens a thread named after the
agent; /chat (or, with message_content on, a plain message) in that thread continues.
/chat-reset and /chat-history let a member start over and read back.

The answer streams in place (bot.front.streaming) unless `chat.stream` is off. Once a
charge is committed, a member is never told that nothing was charged: a failed post is
retried another way, or the member is told it was charged and how to read it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.chat import MESSAGE_MAX, AnswerCut, ChatAnswer, ChatImage
from bot.core.metering import Actor
from bot.core.repository import Agent
from bot.errors import BotError, PermissionDenied
from bot.front.permissions import CommandRules, may_use, overrides_from
from bot.front.persona import EmbedSurface, FollowupSurface, PersonaSurface, WebhookCache
from bot.front.replies import (
    NO_MENTIONS,
    actor_of,
    actor_of_message,
    error_text,
    insufficient_embed,
    reply,
)
from bot.front.streaming import Clock, EditBudget, Gone, LiveAnswer, Sleep, Surface
from cogs._base import FeatureCog, agent_names
from ledger import InsufficientTokens

log = logging.getLogger(__name__)

RULES_SECONDS = 60.0  # how long a server's command permissions are kept before re-reading


class Undelivered(BotError):
    """The answer was charged, but Discord would not take it."""

    def __init__(self, agent: str, charged: int) -> None:
        super().__init__(
            f"Your answer was charged ({charged:,} tokens) but could not be posted here. "
            f"Read it with `/chat-history agent:{agent}`."
        )


def sources_line(answer: ChatAnswer) -> str:
    if not answer.sources:
        return ""
    cited = dict.fromkeys(h.source for h in answer.sources)
    return "\n\n-# Sources: " + "; ".join(cited)


class ChatCog(FeatureCog):
    def __init__(self, bot: Any) -> None:
        super().__init__(bot)
        settings = bot.config.chat
        # The clock and sleep of every streamed answer (tests give a virtual pair, so the
        # throttling they exercise costs no wall-clock time).
        self.clock: Clock = time.monotonic
        self.sleep: Sleep = asyncio.sleep
        self.budget = EditBudget(
            settings.channel_edits, settings.channel_window_seconds, lambda: self.clock()
        )
        self.webhooks = WebhookCache()
        self.running: dict[int, set[asyncio.Task[Any]]] = {}  # thread id -> its answers
        self._rules: dict[int, tuple[CommandRules, float]] = {}
        # Where a server's command permissions come from (tests replace it).
        self.fetch_rules: Callable[[discord.Guild], Awaitable[CommandRules]] = self._fetch_rules

    # ---- /chat ------------------------------------------------------------------------

    @app_commands.command(name="chat", description="Talk with an agent")
    @app_commands.describe(
        agent="The agent", message="What you say", image="A picture to ask about (optional)"
    )
    @app_commands.autocomplete(agent=agent_names)
    async def chat(
        self,
        interaction: discord.Interaction,
        agent: str,
        message: app_commands.Range[str, 1, MESSAGE_MAX],
        image: discord.Attachment | None = None,
    ) -> None:
        interaction.extras["operation"] = "This chat message"
        actor = actor_of(interaction)
        found = await self.services.agents.get(actor, agent)
        await self.services.limits.admit(actor, "chat")  # before a thread is opened
        channel = interaction.channel
        # Discord has applied the server's command permissions to /chat already.
        await self.may_chat(interaction.guild, interaction.user, channel, discord_rules=False)
        await interaction.response.defer(thinking=True)
        picture = await self._picture(image)
        url, file = self.bot.avatar_of(found)
        if isinstance(channel, discord.Thread):
            surface: Surface = FollowupSurface(interaction, found.name, url, file)
            await self._converse(actor, found, str(channel.id), message, picture, surface, channel)
        elif isinstance(channel, discord.TextChannel):
            thread = await channel.create_thread(
                name=f"{found.name} chat"[:100],
                type=discord.ChannelType.public_thread,
                auto_archive_duration=1440,
            )
            await reply(interaction, f"💬 Conversation with **{found.name}**: {thread.mention}")
            await thread.send(
                f"**{interaction.user.display_name}:** {message}"[:2000],
                allowed_mentions=NO_MENTIONS,
            )
            surface = await self._persona(thread, found)
            answer = await self._converse(
                actor, found, str(thread.id), message, picture, surface, thread
            )
            await reply(interaction, _footer(answer), ephemeral=True)
            return
        else:
            # A DM (or the console): the conversation lives in this channel, per agent.
            surface = FollowupSurface(interaction, found.name, url, file)
            await self._converse(
                actor, found, _dm_key(interaction, found), message, picture, surface, channel
            )

    async def _picture(self, image: discord.Attachment | None) -> ChatImage | None:
        if image is None:
            return None
        return await self.services.chat.check_image(image.filename, await image.read())

    async def _converse(
        self,
        actor: Actor,
        agent: Agent,
        thread_key: str,
        message: str,
        picture: ChatImage | None,
        surface: Surface,
        channel: Any,
    ) -> ChatAnswer:
        """Ask, streaming into `surface`; deliver the whole answer, then the footer."""
        settings = self.services.config.chat
        live = LiveAnswer(
            surface,
            getattr(surface, "budget_channel", 0) or getattr(channel, "id", 0),
            self.budget,
            interval=settings.edit_interval_seconds,
            clock=self.clock,
            sleep=self.sleep,
        )
        task = asyncio.current_task()
        key = getattr(channel, "id", None)
        if task is not None and isinstance(channel, discord.Thread):
            self.running.setdefault(channel.id, set()).add(task)
        try:
            answer = await self.services.chat.ask(
                actor,
                agent.name,
                thread_key,
                message,
                on_text=live.add if settings.stream else None,
                image=picture,
            )
        except AnswerCut as cut:
            if live.gone:  # the thread went away mid-answer: nowhere left to tell
                raise Gone() from cut
            await self._deliver(live, agent, cut.charged, "")  # the charged part, whole
            raise
        finally:
            if task is not None and key in self.running:
                self.running[key].discard(task)
                if not self.running[key]:
                    del self.running[key]
        await self._deliver(live, agent, answer.charged, sources_line(answer), answer.text)
        if isinstance(surface, FollowupSurface):
            try:
                await reply(surface.interaction, _footer(answer))
            except discord.HTTPException:
                log.info("could not post the footer of a charged answer")
        return answer

    async def _deliver(
        self, live: LiveAnswer, agent: Agent, charged: int, tail: str, whole: str | None = None
    ) -> None:
        """After the commit: the whole answer reaches the member, or they are told it was
        charged and where to read it."""
        if whole is not None and not live.text:  # not streamed (or nothing streamed yet)
            live.text = whole
        try:
            await live.finish(tail)
        except (discord.HTTPException, Gone):
            if isinstance(live.surface, FollowupSurface | EmbedSurface):
                log.warning("a charged answer could not be posted; the member is told")
                raise Undelivered(agent.name, charged) from None
            # The webhook path failed: post the answer once more, in embeds.
            fallback = LiveAnswer(
                live.surface.fallback,  # type: ignore[attr-defined]
                live.channel_id,
                self.budget,
                interval=live.interval,
                clock=self.clock,
                sleep=self.sleep,
            )
            fallback.text = live.text
            try:
                await fallback.finish()
            except (discord.HTTPException, Gone):
                raise Undelivered(agent.name, charged) from None

    async def _persona(self, thread: Any, agent: Agent) -> Surface:
        """Speak as the agent through the parent channel's webhook where we may."""
        url, _ = self.bot.avatar_of(agent)
        parent = getattr(thread, "parent", None)
        if url and not url.startswith("attachment://") and isinstance(parent, discord.TextChannel):
            hook = await self.webhooks.get(parent)
            return PersonaSurface(thread, agent.name, url, hook, self.webhooks)
        return EmbedSurface(thread, agent.name, url)

    # ---- /chat-reset and /chat-history ------------------------------------------------

    @app_commands.command(name="chat-reset", description="Start a fresh conversation with an agent")
    @app_commands.describe(agent="The agent")
    @app_commands.autocomplete(agent=agent_names)
    async def chat_reset(self, interaction: discord.Interaction, agent: str) -> None:
        actor = actor_of(interaction)
        found = await self.services.agents.get(actor, agent)
        if isinstance(interaction.channel, discord.Thread):
            await reply(
                interaction,
                "A thread is one conversation. To start over, use `/chat` in a channel "
                "outside this thread: it opens a new one.",
                ephemeral=True,
            )
            return
        forgotten = await self.services.chat.reset(actor, agent, _dm_key(interaction, found))
        await reply(
            interaction,
            f"🧹 Fresh start with **{found.name}**: {forgotten:,} earlier messages forgotten.",
            ephemeral=True,
        )

    @app_commands.command(name="chat-history", description="The last turns of this conversation")
    @app_commands.describe(agent="The agent")
    @app_commands.autocomplete(agent=agent_names)
    async def chat_history(self, interaction: discord.Interaction, agent: str) -> None:
        actor = actor_of(interaction)
        found = await self.services.agents.get(actor, agent)
        channel = interaction.channel
        key = str(channel.id) if isinstance(channel, discord.Thread) else None
        key = key or _dm_key(interaction, found)
        turns = await self.services.chat.history(actor, agent, key)
        if not turns:
            await reply(
                interaction, f"No conversation with **{found.name}** here yet.", ephemeral=True
            )
            return
        lines = []
        for turn in turns:
            who = "You" if turn.role == "user" else found.name
            text = " ".join(turn.content.split())
            lines.append(f"**{who}:** {text[:300]}{'…' if len(text) > 300 else ''}")
        embed = discord.Embed(
            title=f"Conversation with {found.name}", description="\n".join(lines)[:4000]
        )
        await reply(interaction, embed=embed, ephemeral=True)

    # ---- plain messages in an agent's thread ------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self.services.config.discord.message_content or message.author.bot:
            return
        channel = message.channel
        if not isinstance(channel, discord.Thread) or message.guild is None:
            return
        images = [a for a in getattr(message, "attachments", []) or [] if _is_image(a)]
        if not message.content and not images:
            return
        agent = await self.services.chat.agent_of_thread(str(channel.id))
        if agent is None:
            retired = await self.services.chat.retired_agent(str(channel.id))
            if retired is not None:
                await channel.send(
                    f"This conversation's agent, {retired}, was deleted. Start a new "
                    "conversation with `/chat` outside this thread.",
                    allowed_mentions=NO_MENTIONS,
                )
            return
        actor = actor_of_message(message)
        try:
            await self.may_chat(message.guild, message.author, channel)
            picture = await self._picture(images[0] if images else None)
            surface = await self._persona(channel, agent)
            await self._converse(
                actor, agent, str(channel.id), message.content, picture, surface, channel
            )
        except InsufficientTokens as error:  # the spec's message, as /chat shows it
            await channel.send(
                embed=insufficient_embed(
                    "This chat message", error, self.bot.config.plans.pro.monthly_tokens
                ),
                allowed_mentions=NO_MENTIONS,
            )
        except Gone:
            log.info("a thread went away while its answer was being written")
        except Exception as error:  # a plain message has no interaction to report to
            log.info("chat from a thread message failed: %s", type(error).__name__)
            if not isinstance(error, BotError):
                log.exception("chat from a thread message failed")
            await channel.send(f"❌ {error_text(error)}", allowed_mentions=NO_MENTIONS)

    async def may_chat(
        self, guild: Any, member: Any, channel: Any, *, discord_rules: bool = True
    ) -> None:
        """The checks every chat passes, /chat and plain messages alike (one path, so a
        rule added here holds for both). `discord_rules`: the server's command
        permissions for /chat, which Discord applies to the command but not to a plain
        message."""
        if guild is None or not discord_rules:
            return
        rules = await self._rules_of(guild)
        parent = getattr(channel, "parent_id", None) or getattr(
            getattr(channel, "parent", None), "id", None
        )
        roles = {r.id for r in getattr(member, "roles", [])}
        try:
            permissions = channel.permissions_for(member)
        except Exception:  # no member data cached: judge by the overrides alone
            permissions = discord.Permissions.none()
        if not may_use(
            rules,
            guild_id=guild.id,
            user_id=member.id,
            role_ids=roles,
            channel_ids=[channel.id] + ([parent] if parent else []),
            permissions=permissions,
        ):
            raise PermissionDenied("You don't have permission to use /chat here.")

    async def _rules_of(self, guild: Any) -> CommandRules:
        cached = self._rules.get(guild.id)
        if cached is not None and time.monotonic() - cached[1] < RULES_SECONDS:
            return cached[0]
        rules = await self.fetch_rules(guild)
        self._rules[guild.id] = (rules, time.monotonic())
        return rules

    async def _fetch_rules(self, guild: discord.Guild) -> CommandRules:
        app_id = self.bot.application_id
        if app_id is None:  # not logged in (the console): no server rules to read
            return CommandRules()
        dev_guild = self.services.config.discord.dev_guild_id
        commands_ = await self.bot.tree.fetch_commands(
            guild=discord.Object(dev_guild) if dev_guild else None
        )
        chat = next((c for c in commands_ if c.name == "chat"), None)
        if chat is None:
            return CommandRules()

        async def overrides(command_id: int) -> tuple[Any, ...]:
            try:
                data = await self.bot.http.get_application_command_permissions(
                    app_id, guild.id, command_id
                )
            except discord.NotFound:  # nothing set at this level
                return ()
            return overrides_from(data.get("permissions", []))

        return CommandRules(
            await overrides(chat.id), await overrides(app_id), chat.default_member_permissions
        )

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: Any) -> None:
        """The member deleted the thread: stop its answers (what was generated is charged)."""
        for task in list(self.running.get(payload.thread_id, ())):
            task.cancel()


def _footer(answer: ChatAnswer) -> str:
    return f"-# {answer.charged:,} tokens used, {answer.available:,} remaining"


def _dm_key(interaction: discord.Interaction, agent: Agent) -> str:
    return f"{interaction.channel_id}:{agent.id}"


def _is_image(attachment: Any) -> bool:
    return (getattr(attachment, "content_type", None) or "").startswith("image/")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ChatCog(bot))
