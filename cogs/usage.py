"""/usage: this period's usage. Managers see the server's by member (top 10 and the
rest), by agent and by operation, with a chart of daily usage against the allowance;
a member sees their own use and cap. Always ephemeral."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.limits import resets_on
from bot.core.usage import OwnUsage, UsageReport
from bot.core.usage_chart import daily_chart
from bot.front.replies import COLOR_OK, actor_of, reply
from cogs._base import FeatureCog
from cogs.tokens import OPERATION_LABELS

CHART_NAME = "usage.png"


def _lines(rows: list[tuple[str, int]], label: Callable[[str], str]) -> str:
    return "\n".join(f"{label(key)}: {tokens:,}" for key, tokens in rows)


def report_embed(report: UsageReport) -> discord.Embed:
    b = report.balance
    share = report.total / b.tokens_limit if b.tokens_limit else 0
    embed = discord.Embed(title="Usage this period", color=COLOR_OK)
    embed.description = (
        f"{report.total:,} tokens used of the {b.tokens_limit:,} allowance ({share:.0%}); "
        f"{b.available:,} left. Resets {resets_on(b.period_end)}."
    )
    members = _lines(report.by_member, lambda k: f"<@{k}>" if k else "No member")
    if report.others:
        members += f"\nOthers: {report.others:,}"
    embed.add_field(name="By member", value=members or "nothing yet", inline=False)
    agents = _lines(report.by_agent, lambda k: k or "No agent")
    embed.add_field(name="By agent", value=agents or "nothing yet", inline=False)
    operations = _lines(report.by_operation, lambda k: OPERATION_LABELS.get(k, k))
    embed.add_field(name="By operation", value=operations or "nothing yet", inline=False)
    embed.set_image(url=f"attachment://{CHART_NAME}")
    return embed


def own_embed(own: OwnUsage) -> discord.Embed:
    s = own.spending
    embed = discord.Embed(title="Your usage this period", color=COLOR_OK)
    if s.cap is None:
        embed.description = (
            f"You have used {s.tokens_used:,} of this server's tokens; no cap applies."
        )
    else:
        embed.description = (
            f"You have used {s.tokens_used:,} of the {s.cap.tokens:,} tokens this server gives "
            f"you this month; {s.remaining:,} left."
        )
    if s.tokens_held:
        embed.add_field(name="In progress", value=f"{s.tokens_held:,}")
    embed.add_field(name="Resets", value=resets_on(own.resets))
    return embed


class UsageCog(FeatureCog):
    @app_commands.command(name="usage", description="This period's token usage")
    async def usage(self, interaction: discord.Interaction) -> None:
        actor = actor_of(interaction)
        services = self.services
        if not actor.can_manage:
            own = await services.usage.own(actor)
            await reply(interaction, embed=own_embed(own), ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await services.usage.report(actor)
        b = report.balance
        chart = await asyncio.to_thread(
            daily_chart, report.by_day, b.period_start, b.period_end, b.tokens_limit
        )
        file = discord.File(io.BytesIO(chart.png), filename=CHART_NAME)
        await reply(interaction, embed=report_embed(report), file=file, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(UsageCog(bot))
