"""Delivering a low-balance alert on Discord: to the channel the managers picked with
`/limits alerts`, or else as a DM to the server's owner, with link buttons to the Pro
checkout and to the token packs where the store sells them. The ledger has already made
sure this process is the only one to deliver it (ledger/alerts.py)."""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.core.limits import AlertNotice
from bot.front.replies import NO_MENTIONS
from ledger import BalanceAlert

log = logging.getLogger(__name__)


async def links(services: Any, notice: AlertNotice, owner_id: int | None) -> list[tuple[str, str]]:
    """(label, url) of the Pro checkout and each token pack; none that cannot be built."""
    found: list[tuple[str, str]] = []
    buyer = owner_id or 0
    try:
        found.append(
            ("Upgrade to Pro", await services.billing.checkout_url(notice.account_id, buyer))
        )
    except Exception:  # no store configured, or the store is unreachable: say it without
        log.info("no checkout link for the alert of %s", notice.account_id)
    try:
        for offer in await services.billing.pack_offers(notice.account_id, buyer):
            found.append((f"{offer.tokens:,} tokens", offer.url))
    except Exception:
        log.info("no token pack links for the alert of %s", notice.account_id)
    return found


def link_view(found: list[tuple[str, str]]) -> discord.ui.View | None:
    if not found:
        return None
    view = discord.ui.View()
    for label, url in found[:5]:
        view.add_item(discord.ui.Button(label=label, url=url, style=discord.ButtonStyle.link))
    return view


async def deliver_alert(bot: Any, alert: BalanceAlert) -> None:
    notice = await bot.services.limits.notice(alert)
    if notice is None:
        return
    guild = bot.get_guild(notice.guild_id)
    owner_id = getattr(guild, "owner_id", None)
    found = await links(bot.services, notice, owner_id)
    kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS}
    if (view := link_view(found)) is not None:
        kwargs["view"] = view
    target: Any = None
    if notice.channel_id is not None:
        target = bot.get_channel(notice.channel_id)
    if target is None and owner_id is not None:
        target = await bot.fetch_user(owner_id)
    if target is None:
        log.warning("nowhere to send the low-balance alert of %s", notice.account_id)
        return
    await target.send(notice.text, **kwargs)
