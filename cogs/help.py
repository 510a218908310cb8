"""/help: every command with one line and its cost, the account's plan and balance, and
where to upgrade. An embed in Discord; the console prints it as text."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.front.replies import COLOR_OK, actor_of, reply, upgrade_view
from cogs._base import FeatureCog


def costs_of(config: Any) -> dict[str, str]:
    """What a command costs, by its qualified name (absent: free)."""
    return {
        "avatar generate": f"{config.costs.avatar_generation:,} tokens",
        "avatar upload": f"{config.costs.avatar_upload:,} tokens"
        if config.costs.avatar_upload
        else "free",
        "docs upload": "the embedding tokens of its text",
        "chat": "the answer's tokens (prompt, any image, reply) and the question's embedding",
        "upgrade": config.plans.pro.price_label or "see /upgrade",
    }


def command_lines(tree: app_commands.CommandTree, config: Any, guild: Any) -> list[str]:
    costs = costs_of(config)
    lines = []
    seen = set()
    found = list(tree.get_commands())
    if guild is not None:
        found += tree.get_commands(guild=discord.Object(guild.id))
    for command in found:
        leaves = command.walk_commands() if isinstance(command, app_commands.Group) else [command]
        for leaf in leaves:
            if not isinstance(leaf, app_commands.Command):
                continue  # a subgroup: its commands come in the walk too
            name = leaf.qualified_name
            if name in seen or name.startswith("admin") or name == "help":
                continue
            seen.add(name)
            options = " ".join(p.display_name for p in leaf.parameters)
            cost = costs.get(name, "free")
            lines.append(
                f"`/{name}{' ' + options if options else ''}`: {leaf.description} ({cost})"
            )
    return sorted(lines)


class HelpCog(FeatureCog):
    @app_commands.command(name="help", description="The commands, what they cost, and your plan")
    async def help(self, interaction: discord.Interaction) -> None:
        services = self.services
        actor = actor_of(interaction)
        balance = await services.ledger.balance(actor.account_id)
        lines = command_lines(self.bot.tree, services.config, interaction.guild)
        embed = discord.Embed(title="Agents: commands", color=COLOR_OK)
        embed.description = "\n".join(lines)[:4000]
        whose = "This server" if interaction.guild_id else "You"
        stamp = int(balance.period_end.timestamp())
        embed.add_field(
            name="Plan",
            value=f"{whose}: {balance.plan_type.capitalize()}, {balance.available:,} tokens "
            f"remaining (resets <t:{stamp}:D>)",
            inline=False,
        )
        url = None
        if balance.plan_type != "pro":
            pro = services.config.plans.pro
            url = (
                self.bot.upgrade_url(actor.account_id) if hasattr(self.bot, "upgrade_url") else None
            )
            embed.add_field(
                name="Upgrade",
                value=f"Pro: {pro.summary}, {pro.price_label}. Use `/upgrade`"
                + (f" or {url}" if url else "")
                + ".",
                inline=False,
            )
        await reply(interaction, embed=embed, view=upgrade_view(url), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(HelpCog(bot))
