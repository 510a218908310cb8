"""What every Discord front end shares: who is acting, replies with mentions disabled,
message splitting, and how an error becomes a message. Used by the cogs, the real bot
and the stand-in interaction alike, so the console shows exactly what Discord would."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.config import short_tokens
from bot.core.limits import cap_sentence
from bot.core.metering import Actor
from bot.errors import BotError
from ledger import InsufficientTokens, LedgerError, MemberCapReached, guild_account, user_account

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()
COLOR_OK = discord.Color.green()
COLOR_ERROR = discord.Color.red()


def actor_of(interaction: discord.Interaction) -> Actor:
    """The account a command charges: the server's, or the user's own in a DM."""
    user_id = interaction.user.id
    if interaction.guild_id is None:
        return Actor(user_account(user_id), user_id, None, can_manage=True)
    guild = interaction.guild
    owner = guild is not None and guild.owner_id == user_id
    perms = interaction.permissions
    can_manage = owner or perms.manage_guild or perms.administrator
    return Actor(
        guild_account(interaction.guild_id),
        user_id,
        interaction.guild_id,
        can_manage,
        roles_of(interaction.user, interaction.guild_id),
        where(interaction.channel, interaction.channel_id),
    )


def roles_of(member: Any, guild_id: int) -> tuple[int, ...]:
    """A member's role ids, highest first (the server's own order); @everyone left out."""
    roles = [r for r in getattr(member, "roles", ()) if r.id != guild_id]
    return tuple(r.id for r in sorted(roles, key=lambda r: getattr(r, "position", 0), reverse=True))


def where(channel: Any, channel_id: int | None) -> int | None:
    """The channel a member acts in, for the server's channel rules: a thread's parent."""
    if isinstance(channel, discord.Thread):
        return getattr(channel, "parent_id", None) or getattr(channel.parent, "id", None)
    return channel_id


def actor_of_message(message: discord.Message) -> Actor:
    """The actor of a plain message in a server (an agent's thread)."""
    assert message.guild is not None
    author = message.author
    perms = getattr(author, "guild_permissions", None)
    can_manage = getattr(message.guild, "owner_id", None) == author.id or bool(
        perms and (perms.manage_guild or perms.administrator)
    )
    return Actor(
        guild_account(message.guild.id),
        author.id,
        message.guild.id,
        can_manage,
        roles_of(author, message.guild.id),
        where(message.channel, message.channel.id),
    )


async def reply(
    interaction: discord.Interaction,
    content: str | None = None,
    *,
    ephemeral: bool = False,
    **kwargs: Any,
) -> None:
    """Answer an interaction whatever its state (fresh, deferred or answered)."""
    kwargs.setdefault("allowed_mentions", NO_MENTIONS)
    kwargs["content"] = content  # a followup takes no content=None: _drop_none drops it
    if interaction.response.is_done():
        await interaction.followup.send(ephemeral=ephemeral, **_drop_none(kwargs))
    else:
        await interaction.response.send_message(ephemeral=ephemeral, **_drop_none(kwargs))


def _drop_none(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def split_message(text: str, limit: int = MESSAGE_LIMIT - 10) -> list[str]:
    """Split `text` into parts under `limit` characters on line boundaries; a code block
    cut between two parts is closed at the end of one and reopened (same language) at
    the start of the next, so every part renders on its own."""
    parts: list[str] = []
    current = ""
    fence: str | None = None  # the opening line of the code block we are inside
    for line in text.splitlines(keepends=True):
        pieces = [line]
        room = limit - 8 - len(fence or "")
        if len(line) > room:  # a single line longer than a message: hard-wrap it
            pieces = [line[i : i + room] for i in range(0, len(line), room)]
        for piece in pieces:
            closing = "\n```" if fence else ""
            if len(current) + len(piece) + len(closing) > limit and current.strip():
                parts.append(current.rstrip("\n") + closing)
                current = (fence + "\n") if fence else ""
            current += piece
            if piece.lstrip().startswith("```"):
                fence = None if fence else piece.strip()
    if current.strip():
        parts.append(current.rstrip("\n") + ("\n```" if fence else ""))
    return parts or [""]


def insufficient_embed(what: str, error: InsufficientTokens, pro_tokens: int) -> discord.Embed:
    """The spec's message: what it needs, what is left, and the upgrade hint with the
    Pro allowance as configured (`plans.pro.monthly_tokens`)."""
    about = "about " if error.approximate else ""
    text = (
        f"{what} requires {about}{error.needed:,} tokens. "
        f"You have {error.available:,} tokens remaining."
    )
    if error.plan != "pro":
        text += f" Upgrade to Pro for {short_tokens(pro_tokens)} tokens!"
    return discord.Embed(title="❌ Insufficient Tokens", description=text, color=COLOR_ERROR)


def upgrade_view(url: str | None) -> discord.ui.View | None:
    if not url:
        return None
    view = discord.ui.View()
    view.add_item(
        discord.ui.Button(label="Upgrade to Pro", url=url, style=discord.ButtonStyle.link)
    )
    return view


def error_text(error: BaseException) -> str:
    if isinstance(error, BotError):
        return error.user_message
    if isinstance(error, MemberCapReached):
        return cap_sentence(error)
    if isinstance(error, app_commands.CheckFailure):
        return "You don't have permission to use this command here."
    if isinstance(error, LedgerError):
        return str(error)
    return "Something went wrong on our side; nothing was charged. Please try again."


async def report_error(
    interaction: discord.Interaction, error: BaseException, upgrade_url: str | None = None
) -> None:
    """Show `error` to the member as a sentence (ephemeral), never as raw exception text."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, InsufficientTokens):
        what = interaction.extras.get("operation", "This action")
        view = upgrade_view(upgrade_url) if error.plan != "pro" else None
        pro_tokens = interaction.client.config.plans.pro.monthly_tokens  # type: ignore[attr-defined]
        embed = insufficient_embed(what, error, pro_tokens)
        await reply(interaction, embed=embed, view=view, ephemeral=True)
        return
    known = isinstance(error, BotError | app_commands.CheckFailure | LedgerError)
    if not known:
        log.error("command failed", exc_info=error)
    embed = discord.Embed(description=f"❌ {error_text(error)}", color=COLOR_ERROR)
    await reply(interaction, embed=embed, ephemeral=True)
