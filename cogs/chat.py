"""/chat: talk with an agent. In a server channel it opens a thread named after the
agent; /chat (or, with message_content on, a plain message) in that thread continues."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.chat import MESSAGE_MAX, ChatAnswer
from bot.core.metering import Actor
from bot.core.repository import Agent
from bot.front.replies import (
    NO_MENTIONS,
    actor_of,
    error_text,
    insufficient_embed,
    reply,
    split_message,
)
from cogs._base import FeatureCog, agent_names
from ledger import InsufficientTokens, guild_account

log = logging.getLogger(__name__)


def answer_parts(answer: ChatAnswer) -> list[str]:
    text = answer.text
    if answer.sources:
        cited = dict.fromkeys(h.source for h in answer.sources)
        text += "\n\n-# Sources: " + "; ".join(cited)
    return split_message(text)


class ChatCog(FeatureCog):
    @app_commands.command(name="chat", description="Talk with an agent")
    @app_commands.describe(agent="The agent", message="What you say")
    @app_commands.autocomplete(agent=agent_names)
    async def chat(
        self,
        interaction: discord.Interaction,
        agent: str,
        message: app_commands.Range[str, 1, MESSAGE_MAX],
    ) -> None:
        interaction.extras["operation"] = "This chat message"
        actor = actor_of(interaction)
        found = await self.services.agents.get(actor, agent)
        channel = interaction.channel
        await interaction.response.defer(thinking=True)
        if isinstance(channel, discord.Thread):
            thread_key = str(channel.id)
            answer = await self.services.chat.ask(actor, agent, thread_key, message)
            await self._send_followups(interaction, found, answer, message)
        elif isinstance(channel, discord.TextChannel):
            thread = await channel.create_thread(
                name=f"{found.name} chat"[:100],
                type=discord.ChannelType.public_thread,
                auto_archive_duration=1440,
            )
            answer = await self.services.chat.ask(actor, agent, str(thread.id), message)
            await thread.send(
                f"**{interaction.user.display_name}:** {message}"[:2000],
                allowed_mentions=NO_MENTIONS,
            )
            await self.speak(thread, found, answer)
            await reply(interaction, f"💬 Conversation with **{found.name}**: {thread.mention}")
        else:
            # A DM (or the console): the conversation lives in this channel, per agent.
            thread_key = f"{interaction.channel_id}:{found.id}"
            answer = await self.services.chat.ask(actor, agent, thread_key, message)
            await self._send_followups(interaction, found, answer, message)

    async def _send_followups(
        self, interaction: discord.Interaction, agent: Agent, answer: ChatAnswer, message: str
    ) -> None:
        url, file = self.bot.avatar_of(agent)
        for number, part in enumerate(answer_parts(answer)):
            embed = discord.Embed(description=part)
            embed.set_author(name=agent.name, icon_url=url)
            kwargs: dict[str, Any] = {"embed": embed}
            if number == 0 and file is not None:
                kwargs["file"] = file
            await reply(interaction, **kwargs)
        footer = f"-# {answer.charged:,} tokens used, {answer.available:,} remaining"
        await reply(interaction, footer)

    async def speak(self, channel: discord.Thread, agent: Agent, answer: ChatAnswer) -> None:
        """Post as the agent: a webhook with its name and avatar where we may, else embeds."""
        url, file = self.bot.avatar_of(agent)
        parent = channel.parent
        webhook = None
        if url and not url.startswith("attachment://") and isinstance(parent, discord.TextChannel):
            try:
                hooks = await parent.webhooks()
                webhook = next(
                    (h for h in hooks if h.name == "Agents"), None
                ) or await parent.create_webhook(name="Agents")
            except discord.HTTPException:
                webhook = None  # no Manage Webhooks permission: fall back to embeds
        for part in answer_parts(answer):
            if webhook is not None:
                await webhook.send(
                    part,
                    username=agent.name,
                    avatar_url=url,
                    thread=channel,
                    allowed_mentions=NO_MENTIONS,
                )
            else:
                embed = discord.Embed(description=part)
                embed.set_author(name=agent.name, icon_url=url if url and not file else None)
                await channel.send(embed=embed, allowed_mentions=NO_MENTIONS)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self.services.config.discord.message_content or message.author.bot:
            return
        channel = message.channel
        if not isinstance(channel, discord.Thread) or message.guild is None or not message.content:
            return
        agent = await self.services.chat.agent_of_thread(str(channel.id))
        if agent is None:
            return
        actor = Actor(guild_account(message.guild.id), message.author.id, message.guild.id)
        try:
            async with channel.typing():
                answer = await self.services.chat.ask(
                    actor, agent.name, str(channel.id), message.content
                )
            await self.speak(channel, agent, answer)
        except InsufficientTokens as error:  # the spec's message, as /chat shows it
            await channel.send(
                embed=insufficient_embed("This chat message", error), allowed_mentions=NO_MENTIONS
            )
        except Exception as error:  # a plain message has no interaction to report to
            log.info("chat from a thread message failed: %s", type(error).__name__)
            await channel.send(f"❌ {error_text(error)}", allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ChatCog(bot))
