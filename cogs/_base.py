"""What every feature cog shares: the bot's services, and agent-name autocomplete."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.front.replies import actor_of


class FeatureCog(commands.Cog):
    def __init__(self, bot: Any) -> None:
        self.bot = bot

    @property
    def services(self) -> Any:
        return self.bot.services


async def agent_names(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """At most 25 of this account's agents; the services re-check access on use."""
    services: Any = interaction.client.services  # type: ignore[attr-defined]
    names = await services.agents.names(actor_of(interaction), current)
    return [app_commands.Choice(name=n, value=n) for n in names]
