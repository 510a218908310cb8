"""/tokens and /upgrade: the account's balance, and the way to Pro."""

from __future__ import annotations

from datetime import datetime

import discord
from discord import app_commands
from discord.ext import commands

from bot.billing.service import Subscription
from bot.core.balances import TokenView
from bot.core.metering import Actor
from bot.front.replies import COLOR_OK, actor_of, reply, upgrade_view
from cogs._base import FeatureCog

OPERATION_LABELS = {
    "avatar_generation": "Avatar generation",
    "chat": "Chat",
    "document_upload": "Documents",
}


def usage_bar(fraction: float, width: int = 20) -> str:
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled) + f" {fraction:.0%}"


def tokens_embed(view: TokenView) -> discord.Embed:
    b = view.balance
    embed = discord.Embed(title=f"Tokens: {b.plan_type.capitalize()} plan", color=COLOR_OK)
    embed.description = usage_bar(view.used_fraction)
    embed.add_field(name="Used", value=f"{b.tokens_used:,} / {b.tokens_limit:,}")
    embed.add_field(name="Bonus", value=f"{b.bonus_tokens:,}")
    embed.add_field(name="Remaining", value=f"{b.available:,}")
    if b.tokens_held:
        embed.add_field(name="In progress", value=f"{b.tokens_held:,}")
    stamp = int(b.period_end.timestamp())
    embed.add_field(name="Resets", value=f"<t:{stamp}:D> (<t:{stamp}:R>)")
    if view.usage:
        lines = [f"{OPERATION_LABELS.get(op, op)}: {n:,}" for op, n in view.usage.items()]
        embed.add_field(name="This period", value="\n".join(lines), inline=False)
    if b.plan_type != "pro":
        embed.set_footer(text=f"Pro: {view.pro.summary}, {view.pro.price_label}. /upgrade")
    return embed


class TokensCog(FeatureCog):
    @app_commands.command(name="tokens", description="This server's token balance (yours in DMs)")
    async def tokens(self, interaction: discord.Interaction) -> None:
        actor = actor_of(interaction)
        view = await self.bot.services.balances.view(actor.account_id)
        buttons = None
        if view.balance.plan_type == "pro":
            buttons = await self._manage_view(interaction, actor)
        await reply(interaction, embed=tokens_embed(view), view=buttons, ephemeral=True)

    @app_commands.command(name="upgrade", description="Upgrade this server (or you, in DMs) to Pro")
    async def upgrade(self, interaction: discord.Interaction) -> None:
        actor = actor_of(interaction)
        services = self.bot.services
        config = services.config
        free, pro = config.plans.free, config.plans.pro
        embed = discord.Embed(title="Plans", color=COLOR_OK)
        embed.add_field(name="Free", value=free.summary)
        embed.add_field(
            name=f"Pro ({pro.price_label})",
            value=pro.summary,
        )
        balance = await services.ledger.balance(actor.account_id)
        if balance.plan_type == "pro":
            await self._already_pro(interaction, actor, embed)
            return
        if not actor.can_manage:
            embed.description = (
                "This server is on the free plan. Only the server owner or a member with "
                "Manage Server can upgrade it."
            )
            await reply(interaction, embed=embed, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        url = await services.billing.checkout_url(actor.account_id, actor.user_id)
        embed.description = "Checkout opens in your browser; Pro starts once the payment clears."
        view = upgrade_view(url)
        await self._add_packs(view, actor)
        await reply(interaction, embed=embed, view=view, ephemeral=True)

    async def _add_packs(self, view: discord.ui.View | None, actor: Actor) -> None:
        if view is None:
            return
        for offer in await self.bot.services.billing.pack_offers(actor.account_id, actor.user_id):
            view.add_item(discord.ui.Button(label=f"Buy {offer.tokens:,} tokens", url=offer.url))

    async def _manage_view(
        self, interaction: discord.Interaction, actor: Actor
    ) -> discord.ui.View | None:
        """The "Manage subscription" button, for the buyer and the server's managers only:
        the portal URL is a login to the buyer's billing (cancel, change plan, invoices)."""
        billing = self.bot.services.billing
        subscription = await billing.subscription(actor.account_id)
        if subscription is None or not _may_manage(actor, subscription):
            return None
        if billing.api_key and not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        link = await billing.manage_link(subscription)
        if link is None:
            return None
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label=link.label, url=link.url))
        return view

    async def _already_pro(
        self, interaction: discord.Interaction, actor: Actor, embed: discord.Embed
    ) -> None:
        subscription = await self.bot.services.billing.subscription(actor.account_id)
        embed.description = "This account is on Pro."
        view = None
        if subscription is not None and subscription.grants_access:
            when = subscription.ends_at if subscription.cancelled else subscription.renews_at
            stamp = _timestamp(when)
            if not _may_manage(actor, subscription):
                embed.description = (
                    f"This server is on Pro until {stamp}." if stamp else "This server is on Pro."
                )
            else:
                if stamp:
                    verb = "ends" if subscription.cancelled else "renews"
                    embed.description = f"This account is on Pro; it {verb} {stamp}."
                view = await self._manage_view(interaction, actor)
                if view is not None:
                    await self._add_packs(view, actor)
        await reply(interaction, embed=embed, view=view, ephemeral=True)


def _may_manage(actor: Actor, subscription: Subscription) -> bool:
    return actor.can_manage or subscription.user_id == str(actor.user_id)


def _timestamp(when: datetime | None) -> str | None:
    return f"<t:{int(when.timestamp())}:D>" if when else None


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(TokensCog(bot))
