"""/admin: operators grant and revoke bonus tokens, set plans and read usage.

Hidden from members by default permissions (administrator), registered only in
`admins.admin_guild_id` when it is set, and checked on our side on every call."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.front.replies import COLOR_OK, reply
from cogs.tokens import tokens_embed
from ledger import guild_account, user_account

TARGET_HELP = "A member (their own account); leave empty for this server"


def _account(interaction: discord.Interaction, member: discord.User | discord.Member | None) -> str:
    if member is not None:
        return user_account(member.id)
    if interaction.guild_id is None:
        return user_account(interaction.user.id)
    return guild_account(interaction.guild_id)


@app_commands.default_permissions(administrator=True)
class AdminCog(commands.GroupCog, group_name="admin", group_description="Operators only"):
    def __init__(self, bot: Any) -> None:
        self.bot = bot
        super().__init__()

    @property
    def admin(self) -> Any:
        return self.bot.services.admin

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return self.admin.is_operator(interaction.user.id)

    @app_commands.command(name="grant", description="Add bonus tokens (they never reset)")
    @app_commands.describe(member=TARGET_HELP, amount="Tokens", reason="Kept in the journal")
    async def grant(
        self,
        interaction: discord.Interaction,
        amount: app_commands.Range[int, 1],
        reason: str,
        member: discord.User | None = None,
    ) -> None:
        account = _account(interaction, member)
        result = await self.admin.grant(interaction.user.id, account, amount, reason)
        await reply(
            interaction,
            f"✅ Granted {result.applied:,} tokens to `{account}`. Bonus {result.bonus_tokens:,}, "
            f"available {result.available:,}.",
            ephemeral=True,
        )

    @app_commands.command(name="revoke", description="Take back bonus tokens (never below 0)")
    @app_commands.describe(member=TARGET_HELP, amount="Tokens", reason="Kept in the journal")
    async def revoke(
        self,
        interaction: discord.Interaction,
        amount: app_commands.Range[int, 1],
        reason: str,
        member: discord.User | None = None,
    ) -> None:
        account = _account(interaction, member)
        result = await self.admin.revoke(interaction.user.id, account, amount, reason)
        await reply(
            interaction,
            f"✅ Revoked {result.applied:,} of {result.requested:,} tokens from `{account}`. "
            f"Bonus {result.bonus_tokens:,}, available {result.available:,}.",
            ephemeral=True,
        )

    @app_commands.command(name="plan", description="Set an account's plan")
    @app_commands.describe(member=TARGET_HELP, plan="free or pro", reason="Kept in the journal")
    @app_commands.choices(
        plan=[
            app_commands.Choice(name="free", value="free"),
            app_commands.Choice(name="pro", value="pro"),
        ]
    )
    async def plan(
        self,
        interaction: discord.Interaction,
        plan: app_commands.Choice[str],
        reason: str = "set by an operator",
        member: discord.User | None = None,
    ) -> None:
        account = _account(interaction, member)
        balance = await self.admin.set_plan(interaction.user.id, account, plan.value, reason)
        await reply(
            interaction,
            f"✅ `{account}` is on {balance.plan_type}: {balance.available:,} available.",
            ephemeral=True,
        )

    @app_commands.command(name="usage", description="An account's balance and this period's usage")
    @app_commands.describe(member=TARGET_HELP)
    async def usage(
        self, interaction: discord.Interaction, member: discord.User | None = None
    ) -> None:
        account = _account(interaction, member)
        view = await self.admin.usage(interaction.user.id, account)
        embed = tokens_embed(view)
        embed.title = f"{account}: {embed.title}"
        embed.color = COLOR_OK
        await reply(interaction, embed=embed, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    guild_id = bot.config.admins.admin_guild_id  # type: ignore[attr-defined]
    if guild_id:
        await bot.add_cog(AdminCog(bot), guild=discord.Object(guild_id))
    else:
        await bot.add_cog(AdminCog(bot))
