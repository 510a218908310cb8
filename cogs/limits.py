"""/limits: a server's managers cap what each member may spend from the shared pool,
choose where agents may talk, require a role for paid commands, and pick where
low-balance alerts go. Hidden from members by default permissions (Manage Server) and
checked again by the service on every call."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.limits import LimitsView
from bot.core.repository import ServerRules
from bot.front.replies import COLOR_OK, actor_of, reply
from ledger import Cap

AMOUNT_HELP = "Tokens a month (0: nothing)"
REASON_HELP = "Kept in the journal"


def cap_line(cap: Cap) -> str:
    who = {"member": f"<@{cap.subject_id}>", "role": f"<@&{cap.subject_id}>"}.get(
        cap.scope, "Each member (default)"
    )
    return f"{who}: {cap.tokens:,}"


def rules_lines(rules: ServerRules) -> list[tuple[str, str]]:
    channels = ", ".join(f"<#{c}>" for c in rules.channels) or "anywhere"
    role = f"<@&{rules.paid_role}>" if rules.paid_role else "anyone"
    alerts = f"<#{rules.alert_channel}>" if rules.alert_channel else "a DM to the owner"
    return [
        ("Agents talk in", channels),
        ("Paid commands", role),
        ("Low-balance alerts", alerts),
    ]


def limits_embed(view: LimitsView) -> discord.Embed:
    embed = discord.Embed(title="Limits", color=COLOR_OK)
    order = {"member": 0, "role": 1, "default": 2}
    caps = sorted(view.caps, key=lambda c: (order[c.scope], c.subject_id))
    embed.add_field(
        name="Monthly caps per member",
        value="\n".join(cap_line(c) for c in caps) or "none",
        inline=False,
    )
    for name, value in rules_lines(view.rules):
        embed.add_field(name=name, value=value, inline=False)
    embed.set_footer(
        text="The most specific cap wins: the member's, their highest role's, the default."
    )
    return embed


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class LimitsCog(
    commands.GroupCog, group_name="limits", group_description="Caps and rules for this server"
):
    channels = app_commands.Group(name="channels", description="Where agents may talk")

    def __init__(self, bot: Any) -> None:
        self.bot = bot
        super().__init__()

    @property
    def limits(self) -> Any:
        return self.bot.services.limits

    async def _cap(
        self,
        interaction: discord.Interaction,
        scope: str,
        subject: int | None,
        label: str,
        amount: int,
        reason: str | None,
    ) -> None:
        old = await self.limits.set_cap(actor_of(interaction), scope, subject, amount, reason)
        before = "" if old is None else f" (was {old:,})"
        await reply(
            interaction, f"✅ {label} may spend {amount:,} tokens a month{before}.", ephemeral=True
        )

    @app_commands.command(name="member", description="Cap one member's monthly spending")
    @app_commands.describe(member="The member", amount=AMOUNT_HELP, reason=REASON_HELP)
    async def member(
        self,
        interaction: discord.Interaction,
        member: discord.User,
        amount: app_commands.Range[int, 0],
        reason: str | None = None,
    ) -> None:
        await self._cap(interaction, "member", member.id, member.mention, amount, reason)

    @app_commands.command(name="role", description="Cap the monthly spending of a role's members")
    @app_commands.describe(role="The role", amount=AMOUNT_HELP, reason=REASON_HELP)
    async def role(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        amount: app_commands.Range[int, 0],
        reason: str | None = None,
    ) -> None:
        await self._cap(
            interaction, "role", role.id, f"Members with {role.mention}", amount, reason
        )

    @app_commands.command(name="default", description="Cap every member's monthly spending")
    @app_commands.describe(amount=AMOUNT_HELP, reason=REASON_HELP)
    async def default(
        self,
        interaction: discord.Interaction,
        amount: app_commands.Range[int, 0],
        reason: str | None = None,
    ) -> None:
        await self._cap(interaction, "default", None, "Each member", amount, reason)

    @app_commands.command(
        name="clear", description="Remove a member's or a role's cap (neither: the default)"
    )
    @app_commands.describe(member="Their own cap", role="The role's cap", reason=REASON_HELP)
    async def clear(
        self,
        interaction: discord.Interaction,
        member: discord.User | None = None,
        role: discord.Role | None = None,
        reason: str | None = None,
    ) -> None:
        cleared = await self.limits.clear_caps(
            actor_of(interaction),
            member.id if member else None,
            role.id if role else None,
            reason,
        )
        lines = [
            f"✅ Cleared {cap_line(cap)}."
            if existed
            else f"{cap_line(cap).split(':')[0]} had no cap."
            for cap, existed in cleared
        ]
        await reply(interaction, "\n".join(lines), ephemeral=True)

    @app_commands.command(name="show", description="This server's caps and rules")
    async def show(self, interaction: discord.Interaction) -> None:
        view = await self.limits.view(actor_of(interaction))
        await reply(interaction, embed=limits_embed(view), ephemeral=True)

    @channels.command(name="add", description="Let agents talk in this channel (and its threads)")
    @app_commands.describe(channel="A text channel")
    async def channels_add(
        self, interaction: discord.Interaction, channel: discord.TextChannel
    ) -> None:
        rules = await self.limits.add_channel(actor_of(interaction), channel.id)
        await self._rules(interaction, rules)

    @channels.command(name="remove", description="Stop agents talking in this channel")
    @app_commands.describe(channel="A text channel on the list")
    async def channels_remove(
        self, interaction: discord.Interaction, channel: discord.TextChannel
    ) -> None:
        rules = await self.limits.remove_channel(actor_of(interaction), channel.id)
        await self._rules(interaction, rules)

    @channels.command(name="clear", description="Let agents talk anywhere again")
    async def channels_clear(self, interaction: discord.Interaction) -> None:
        rules = await self.limits.remove_channel(actor_of(interaction), None)
        await self._rules(interaction, rules)

    @app_commands.command(name="require", description="Require a role for paid commands")
    @app_commands.describe(role="The role (leave empty: anyone may use paid commands)")
    async def require(
        self, interaction: discord.Interaction, role: discord.Role | None = None
    ) -> None:
        rules = await self.limits.set_paid_role(actor_of(interaction), role.id if role else None)
        await self._rules(interaction, rules)

    @app_commands.command(name="alerts", description="Where low-balance alerts go")
    @app_commands.describe(channel="A text channel (leave empty: a DM to the owner)")
    async def alerts(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        rules = await self.limits.set_alert_channel(
            actor_of(interaction), channel.id if channel else None
        )
        await self._rules(interaction, rules)

    async def _rules(self, interaction: discord.Interaction, rules: ServerRules) -> None:
        text = "\n".join(f"{name}: {value}" for name, value in rules_lines(rules))
        await reply(interaction, f"✅ Saved.\n{text}", ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(LimitsCog(bot))
