"""The Discord bot process: `python -m bot run`.

`setup_hook` opens the services (ledger, AI gateway), loads every cog in `cogs/`, starts
the webhook sidecar and the hold sweeper, and syncs the slash commands. The core finds
the cogs by walking the package; it knows none of them by name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import logging
import pkgutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import discord
from aiohttp import web
from discord import app_commands
from discord.ext import commands

from bot import heap
from bot.billing.lemonsqueezy.client import static_checkout_url
from bot.config import Config
from bot.core.repository import Agent
from bot.front.alerts import deliver_alert
from bot.front.replies import report_error
from bot.http.avatars import avatar_url
from bot.http.sidecar import listening_on, start_sidecar
from bot.runtime import open_ledger
from bot.services import Services

log = logging.getLogger(__name__)

# The bot never joins voice: discord.py's warnings that voice libraries are missing are
# noise at every start.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False

# Waits between attempts to reach Discord at start, then the last one repeats.
START_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

COGS_PACKAGE = "cogs"  # every module in it that does not start with _ is a feature

# What the bot does in a channel, and nothing more: answer, thread a conversation,
# attach avatars, and speak as an agent through a channel webhook.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    manage_webhooks=True,
)
SCOPES = ("bot", "applications.commands")


def intents_for(config: Config) -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True  # guilds, channels and threads: needed to open conversation threads
    if config.discord.message_content:
        # Privileged: enable it in the developer portal too. Lets plain messages in an
        # agent's thread continue the conversation.
        intents.guild_messages = True
        intents.message_content = True
    return intents


def application_id_from_token(token: str) -> int | None:
    """A bot token's first part is the bot's user id (which is the application id)."""
    first = token.split(".", 1)[0]
    try:
        return int(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))
    except ValueError:
        return None


def invite_url(application_id: int | str) -> str:
    return discord.utils.oauth_url(str(application_id), permissions=PERMISSIONS, scopes=SCOPES)


class AgentTree(app_commands.CommandTree):
    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        bot: Any = interaction.client
        url = None
        if interaction.user is not None:
            account = (
                f"guild:{interaction.guild_id}"
                if interaction.guild_id
                else f"user:{interaction.user.id}"
            )
            url = bot.upgrade_url(account) if hasattr(bot, "upgrade_url") else None
        await report_error(interaction, error, url)


class AgentBot(commands.Bot):
    def __init__(self, config: Config, services: Services | None = None) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents_for(config),
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=AgentTree,
            help_command=None,
            **getattr(self, "_shard_options", {}),
        )
        self.config = config
        self.services: Services = services  # type: ignore[assignment]  # set in setup_hook
        self.sidecar: web.AppRunner | None = None
        self._closing = False
        self.pages_checked = False  # `run` read every page before it logged in

    async def load_cogs(self) -> None:
        # Low-balance alerts this process raises are delivered from here.
        self.services.meter.on_alert = lambda alert: deliver_alert(self, alert)
        # By name, as extensions: the client sits below the cogs and imports none of them.
        package = importlib.import_module(COGS_PACKAGE)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                await self.load_extension(f"{COGS_PACKAGE}.{module.name}")

    async def setup_hook(self) -> None:
        if self.services is None:
            self.services = await Services.open(self.config, check_pages=not self.pages_checked)
        await self.load_cogs()
        await self._load_owners()
        self.services.ledger.start_maintenance()
        self.sidecar = await self._start_sidecar()
        frozen = heap.settle(self.config)
        log.debug("start-up heap frozen: %d objects", frozen)
        # Several `run` processes (shards on several hosts) share the database: one of
        # them syncs the commands, the others would only repeat it against the rate limit.
        if not await self.services.ledger.lead("commands"):
            log.info("another process syncs the slash commands")
            return
        guild_id = self.config.discord.dev_guild_id
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info(
            "synced %d slash commands %s",
            len(synced),
            f"to guild {guild_id}" if guild_id else "globally",
        )

    async def _load_owners(self) -> None:
        """The application's owner, or its team's members, are operators too."""
        info = await self.application_info()
        owners = {m.id for m in info.team.members} if info.team else {info.owner.id}
        self.services.admin.set_owners(owners)

    async def _start_sidecar(self) -> web.AppRunner:
        runner = await start_sidecar(
            self.config,
            self.services.ledger,
            notifier=self.notify,
            telemetry=self.services.telemetry,
        )
        log.info("webhook sidecar listening on %s", listening_on(runner))
        return runner

    async def notify(self, account_id: str, user_id: str | None, plan: str, message: str) -> None:
        """Tell the buyer (a DM) and the server (its system channel, when we may post)."""
        if user_id and user_id.isdigit():
            try:
                user = await self.fetch_user(int(user_id))
                await user.send(message)
            except discord.HTTPException:
                log.info("could not DM user %s about %s", user_id, account_id)
        if account_id.startswith("guild:"):
            guild = self.get_guild(int(account_id.removeprefix("guild:")))
            channel = guild.system_channel if guild else None
            if guild and channel and channel.permissions_for(guild.me).send_messages:
                try:
                    await channel.send(message)
                except discord.HTTPException:
                    log.info("could not post the plan change in %s", account_id)

    async def close(self) -> None:
        # A signal and `async with` may both close the bot: the second call does nothing.
        if self._closing:
            return
        self._closing = True
        if self.sidecar is not None:
            await self.sidecar.cleanup()
            self.sidecar = None
        await super().close()
        if self.services is not None:
            await self.services.close()

    def upgrade_url(self, account_id: str) -> str | None:
        return static_checkout_url(self.config, account_id)

    def avatar_of(self, agent: Agent) -> tuple[str | None, discord.File | None]:
        """The avatar as a URL served by the sidecar, or as an attached file."""
        path = self.services.avatars.file_for(agent)
        if path is None:
            return None, None
        public = self.config.webhooks.public_url
        if public:
            return avatar_url(public, path), None
        return "attachment://avatar.png", discord.File(Path(path), filename="avatar.png")


class ShardedAgentBot(AgentBot, commands.AutoShardedBot):
    """The bot taking the shards `discord.shard_ids` of `discord.shard_count`."""

    def __init__(self, config: Config, services: Services | None = None) -> None:
        self._shard_options = {
            "shard_count": config.discord.shard_count,
            "shard_ids": config.discord.shard_ids,
        }
        super().__init__(config, services)


def make_bot(config: Config, services: Services | None = None) -> AgentBot:
    """One process for the whole bot, or the shards this process was given."""
    if config.discord.shard_ids:
        return ShardedAgentBot(config, services)
    return AgentBot(config, services)


async def _main(config: Config, token: str) -> int:
    stop = asyncio.Event()
    current: list[AgentBot] = []
    closing: set[asyncio.Future[None]] = set()

    def on_signal() -> None:
        stop.set()
        for bot in current:
            task = asyncio.ensure_future(bot.close())
            closing.add(task)  # keep a reference until it is done
            task.add_done_callback(closing.discard)

    # The database first: a damaged, read-only or foreign file stops the start with its
    # one line at once, not after Discord is reached (or never, while it can't be).
    await (await open_ledger(config, "bot", check_pages=True)).close()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    attempt = 0
    while not stop.is_set():
        bot = make_bot(config)
        bot.pages_checked = True
        current[:] = [bot]
        try:
            async with bot:
                await bot.start(token)
            return 0
        except discord.LoginFailure:
            print(
                "Discord refused DISCORD_TOKEN (401): it is wrong or was reset; copy the bot "
                "token again from the developer portal (Bot > Reset Token)",
                file=sys.stderr,
            )
            return 2
        except discord.PrivilegedIntentsRequired:
            print(
                "discord.message_content is on, but the Message Content intent is not enabled "
                "for this bot in the developer portal",
                file=sys.stderr,
            )
            return 2
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            if bot.services is not None:
                raise  # past the start: not ours to retry
            wait = START_BACKOFF[min(attempt, len(START_BACKOFF) - 1)]
            attempt += 1
            log.warning("cannot reach Discord (%s); retrying in %.0f s", _reason(error), wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    return 0


def _reason(error: BaseException) -> str:
    """The innermost cause in a few words (aiohttp nests the OS error)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.splitlines()[0][:200]


def run_bot(config: Config) -> int:
    assert config.secrets.discord_token is not None
    return asyncio.run(_main(config, config.secrets.discord_token.get_secret_value()))
