"""Discord's command permissions (Server Settings > Integrations), evaluated by us.

Discord applies them to slash commands before the bot sees the interaction, but not to
plain messages: a plain message in an agent's thread is a paid /chat, so it must pass
the very rules the server set for /chat. The rules, as Discord documents them:
- Overrides set on the command win over those set on the whole application.
- For the member: a user override, else their roles' overrides (any allowing role
  allows), else the @everyone override (its id is the server's id); with no override at
  any level, the command's default member permissions.
- For the channel: an override on that channel, else on "all channels" (the server's id
  minus 1); none: allowed.
- Administrators may always use commands.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

ROLE, USER, CHANNEL = 1, 2, 3  # Discord's permission target types


@dataclass(frozen=True)
class Override:
    target: int
    kind: int  # ROLE, USER or CHANNEL
    allowed: bool


@dataclass(frozen=True)
class CommandRules:
    command: tuple[Override, ...] = ()
    application: tuple[Override, ...] = ()
    default_member_permissions: discord.Permissions | None = None


def _member_verdict(
    overrides: tuple[Override, ...], guild_id: int, user_id: int, role_ids: set[int]
) -> bool | None:
    for o in overrides:
        if o.kind == USER and o.target == user_id:
            return o.allowed
    roles = [o.allowed for o in overrides if o.kind == ROLE and o.target in role_ids]
    if roles:
        return any(roles)
    for o in overrides:
        if o.kind == ROLE and o.target == guild_id:
            return o.allowed
    return None


def _channel_verdict(
    overrides: tuple[Override, ...], guild_id: int, channel_ids: list[int]
) -> bool | None:
    for target in [*channel_ids, guild_id - 1]:
        for o in overrides:
            if o.kind == CHANNEL and o.target == target:
                return o.allowed
    return None


def may_use(
    rules: CommandRules,
    *,
    guild_id: int,
    user_id: int,
    role_ids: set[int],
    channel_ids: list[int],  # the thread, then its parent channel
    permissions: discord.Permissions,
) -> bool:
    if permissions.administrator:
        return True
    for level in (rules.command, rules.application):
        verdict = _channel_verdict(level, guild_id, channel_ids)
        if verdict is not None:
            if not verdict:
                return False
            break
    for level in (rules.command, rules.application):
        verdict = _member_verdict(level, guild_id, user_id, role_ids)
        if verdict is not None:
            return verdict
    required = rules.default_member_permissions
    return required is None or permissions >= required


def overrides_from(raw: list[dict[str, object]]) -> tuple[Override, ...]:
    """Discord's JSON permission entries as overrides."""
    return tuple(
        Override(int(str(p["id"])), int(str(p["type"])), bool(p["permission"])) for p in raw
    )
