"""Where an agent's answer is posted: the surfaces a `LiveAnswer` streams into, and the
channel webhook that lets an agent speak with its own name and avatar.

Promises:
- Each channel's "Agents" webhook is looked up once and kept (`WebhookCache`), not
  listed on every answer. A channel where it cannot be had (Manage Webhooks missing,
  or Discord's limit of 15 webhooks reached) is remembered for a while too, and said
  once in the log; its agents speak in embeds with their name and avatar.
- Answers spoken through a channel's webhook, in whichever of its threads, draw on that
  channel's edit budget together (they share one webhook's rate limit).
- A webhook send that Discord refuses (it refuses usernames containing "discord" or
  "clyde", among others) falls back to embeds for that answer: the answer is never
  lost to a webhook.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord

from bot.front.replies import NO_MENTIONS

log = logging.getLogger(__name__)

WEBHOOK_NAME = "Agents"
MAX_WEBHOOKS_REACHED = 30007  # Discord's error code: 15 webhooks in this channel
UNKNOWN_WEBHOOK = 10015
RETRY_SECONDS = 600.0  # a channel without a usable webhook is asked again after this


def agent_embed(name: str, text: str, icon_url: str | None) -> discord.Embed:
    embed = discord.Embed(description=text)
    embed.set_author(name=name, icon_url=icon_url)
    return embed


class FollowupSurface:
    """An interaction's followups, in embeds with the agent as author (the first carries
    the avatar file when there is no public avatar URL)."""

    def __init__(
        self, interaction: discord.Interaction, name: str, url: str | None, file: Any
    ) -> None:
        self.interaction = interaction
        self.name = name
        self.url = url
        self.file = file

    async def send(self, text: str) -> Any:
        kwargs: dict[str, Any] = {"embed": agent_embed(self.name, text, self.url)}
        if self.file is not None:
            kwargs["file"], self.file = self.file, None
        return await self.interaction.followup.send(
            wait=True, allowed_mentions=NO_MENTIONS, **kwargs
        )

    async def edit(self, message: Any, text: str) -> None:
        await message.edit(embed=agent_embed(self.name, text, self.url))


class EmbedSurface:
    """Plain messages in a channel or thread, in embeds with the agent as author."""

    def __init__(self, channel: Any, name: str, url: str | None) -> None:
        self.channel = channel
        self.name = name
        # An attachment:// icon needs the file in the same message: none here.
        self.url = url if url and not url.startswith("attachment://") else None

    async def send(self, text: str) -> Any:
        return await self.channel.send(
            embed=agent_embed(self.name, text, self.url), allowed_mentions=NO_MENTIONS
        )

    async def edit(self, message: Any, text: str) -> None:
        await message.edit(embed=agent_embed(self.name, text, self.url))


class PersonaSurface:
    """The agent speaking through the channel's webhook, or in embeds when it may not."""

    def __init__(
        self, thread: Any, name: str, url: str | None, webhook: Any, cache: WebhookCache
    ) -> None:
        self.thread = thread
        self.name = name
        self.url = url
        self.webhook = webhook
        self.cache = cache
        self.fallback = EmbedSurface(thread, name, url)

    @property
    def budget_channel(self) -> int:
        """Whose edit budget this answer draws on: every thread's answers go through the
        parent channel's one webhook, so they share the parent's budget."""
        if self.webhook is not None:
            return int(getattr(self.thread.parent, "id", 0) or self.thread.id)
        return int(self.thread.id)

    async def send(self, text: str) -> Any:
        if self.webhook is not None:
            try:
                return _ByWebhook(
                    await self.webhook.send(
                        text,
                        username=self.name,
                        avatar_url=self.url,
                        thread=self.thread,
                        wait=True,
                        allowed_mentions=NO_MENTIONS,
                    )
                )
            except discord.NotFound as error:
                if getattr(error, "code", None) != UNKNOWN_WEBHOOK:
                    raise  # the thread is gone
                self._give_up(error)
            except discord.HTTPException as error:
                self._give_up(error)
        return await self.fallback.send(text)

    async def edit(self, message: Any, text: str) -> None:
        if isinstance(message, _ByWebhook):
            await message.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        else:
            await self.fallback.edit(message, text)

    def _give_up(self, error: discord.HTTPException) -> None:
        """The webhook refused this answer: embeds from here on."""
        if getattr(error, "code", None) == UNKNOWN_WEBHOOK:
            self.cache.forget(getattr(self.thread.parent, "id", 0))
        log.warning(
            "the webhook refused to speak as agent %r (HTTP %s, code %s); using embeds",
            self.name,
            getattr(error, "status", "?"),
            getattr(error, "code", "?"),
        )
        self.webhook = None


class _ByWebhook:
    def __init__(self, message: Any) -> None:
        self.message = message


class WebhookCache:
    """channel id -> its "Agents" webhook, or None for a channel where we may not have one."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._hooks: dict[int, tuple[Any, float]] = {}
        self._told: set[tuple[int, str]] = set()

    def forget(self, channel_id: int) -> None:
        self._hooks.pop(channel_id, None)

    async def get(self, channel: Any) -> Any:
        cached = self._hooks.get(channel.id)
        if cached is not None:
            hook, at = cached
            if hook is not None or self.clock() - at < RETRY_SECONDS:
                return hook
        hook = await self._find_or_create(channel)
        self._hooks[channel.id] = (hook, self.clock())
        return hook

    async def _find_or_create(self, channel: Any) -> Any:
        try:
            hooks = await channel.webhooks()
            found = next((h for h in hooks if h.name == WEBHOOK_NAME), None)
            return found or await channel.create_webhook(name=WEBHOOK_NAME)
        except discord.Forbidden:
            self._say_once(channel.id, "no Manage Webhooks permission")
        except discord.HTTPException as error:
            if getattr(error, "code", None) == MAX_WEBHOOKS_REACHED:
                self._say_once(channel.id, "it already has Discord's maximum of 15 webhooks")
            else:
                self._say_once(channel.id, f"HTTP {getattr(error, 'status', '?')}")
        return None

    def _say_once(self, channel_id: int, why: str) -> None:
        if (channel_id, why) in self._told:
            return
        self._told.add((channel_id, why))
        log.warning("agents speak in embeds in channel %d: %s", channel_id, why)
