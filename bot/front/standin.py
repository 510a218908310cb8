"""A stand-in for `discord.Interaction` and a runner that drives the cogs with it.

The console and the tests use the very same cog code as the bot: the runner finds the
app command in the bot's tree, runs its checks (not only its callback), converts the
options as Discord would, calls it, and routes errors through the tree's error
handler. Every answer is recorded as a `Sent`; nothing here talks to Discord.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.enums import AppCommandOptionType as Opt

from bot.front.confirm import press


@dataclass
class Sent:
    """One thing the bot did in answer: a message, a followup, an edit, a defer, a modal."""

    kind: str
    content: str | None = None
    embeds: list[discord.Embed] = field(default_factory=list)
    view: discord.ui.View | None = None
    files: list[discord.File] = field(default_factory=list)
    ephemeral: bool = False
    allowed_mentions: discord.AllowedMentions | None = None
    at: float = 0.0  # loop time, to check the 3-second answer deadline
    of: Sent | None = None  # for an edit: the message it edits (as first sent)

    def text(self) -> str:
        """Everything a member would read, as plain text."""
        lines = [self.content] if self.content else []
        for embed in self.embeds:
            lines += [embed.title or "", embed.description or ""]
            lines += [f"{f.name}: {f.value}" for f in embed.fields]
            if embed.footer and embed.footer.text:
                lines.append(embed.footer.text)
        return "\n".join(line for line in lines if line)

    def buttons(self) -> list[tuple[str, str | None]]:
        if self.view is None:
            return []
        return [
            (item.label or "", item.url)
            for item in self.view.children
            if isinstance(item, discord.ui.Button)
        ]


@dataclass
class StandInPermissions:
    manage_guild: bool = False
    administrator: bool = False


class StandInRole:
    def __init__(self, role_id: int, position: int = 1) -> None:
        self.id = role_id
        self.name = f"role{role_id}"
        self.position = position

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


class StandInUser:
    def __init__(
        self, user_id: int, name: str | None = None, roles: list[StandInRole] | None = None
    ) -> None:
        self.id = user_id
        self.name = name or f"user{user_id}"
        self.display_name = self.name
        self.global_name = self.name
        self.bot = False
        self.roles = list(roles or [])  # as a Member's: lowest first

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def __str__(self) -> str:
        return self.name


class StandInGuild:
    def __init__(self, guild_id: int, owner_id: int, name: str = "Console Server") -> None:
        self.id = guild_id
        self.owner_id = owner_id
        self.name = name
        self.system_channel = None


class StandInChannel:
    def __init__(self, channel_id: int, guild: StandInGuild | None) -> None:
        self.id = channel_id
        self.guild = guild
        self.name = "console"


class StandInTextChannel(discord.TextChannel):
    """A text channel named in an option (`#name`, `<#id>` or an id); a real
    discord.TextChannel subclass, so the option's transformer accepts it."""

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.name = f"channel{channel_id}"

    def resolve(self) -> StandInTextChannel:
        return self


class StandInAttachment:
    """What a cog reads of a `discord.Attachment`, backed by bytes (or a local file)."""

    def __init__(self, filename: str, data: bytes, content_type: str | None = None) -> None:
        self.filename = filename
        self._data = data
        self.size = len(data)
        self.content_type = content_type or mimetypes.guess_type(filename)[0]
        self.url = f"attachment://{filename}"

    @classmethod
    def from_path(cls, path: str | Path) -> StandInAttachment:
        path = Path(path).expanduser()
        return cls(path.name, path.read_bytes())

    async def read(self) -> bytes:
        return self._data


class Transcript:
    def __init__(self, listener: Callable[[Sent], None] | None = None) -> None:
        self.sent: list[Sent] = []
        self.started = asyncio.get_running_loop().time()
        self.listener = listener  # told of each answer as it happens (the console's stream)

    def add(self, sent: Sent) -> Sent:
        sent.at = asyncio.get_running_loop().time() - self.started
        self.sent.append(sent)
        if self.listener is not None:
            self.listener(sent)
        return sent


class StandInResponse:
    def __init__(self, interaction: StandInInteraction) -> None:
        self._interaction = interaction
        self._done = False

    def is_done(self) -> bool:
        return self._done

    def _answer(self) -> None:
        if self._done:
            raise discord.InteractionResponded(self._interaction)  # type: ignore[arg-type]
        self._done = True

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        self._answer()
        self._interaction.deferred_ephemeral = ephemeral
        self._interaction.transcript.add(Sent("defer", ephemeral=ephemeral))

    async def send_message(self, content: str | None = None, **kwargs: Any) -> None:
        self._answer()
        self._interaction.transcript.add(_sent("message", content, kwargs, self._interaction))
        self._interaction.answer_view(kwargs.get("view"))

    async def edit_message(self, content: str | None = None, **kwargs: Any) -> None:
        """A component's answer: the message it sits on is edited."""
        self._answer()
        self._interaction.transcript.add(_sent("edit", content, kwargs, self._interaction))

    async def send_modal(self, modal: discord.ui.Modal) -> None:
        self._answer()
        self._interaction.transcript.add(Sent("modal", content=modal.title))
        await self._interaction.answer_modal(modal)


class StandInFollowup:
    def __init__(self, interaction: StandInInteraction) -> None:
        self._interaction = interaction

    async def send(self, content: str | None = None, **kwargs: Any) -> StandInMessage:
        kwargs.setdefault("ephemeral", False)
        sent = self._interaction.transcript.add(
            _sent("followup", content, kwargs, self._interaction)
        )
        self._interaction.answer_view(kwargs.get("view"))
        return StandInMessage(self._interaction, sent)


class StandInMessage:
    def __init__(self, interaction: StandInInteraction, sent: Sent) -> None:
        self._interaction = interaction
        self.sent = sent
        self.id = len(interaction.transcript.sent)

    async def edit(self, content: str | None = None, **kwargs: Any) -> StandInMessage:
        edit = _sent("edit", content, kwargs, self._interaction)
        edit.of = self.sent.of or self.sent
        sent = self._interaction.transcript.add(edit)
        return StandInMessage(self._interaction, sent)


def _sent(
    kind: str, content: str | None, kwargs: dict[str, Any], interaction: StandInInteraction
) -> Sent:
    embeds = list(kwargs.get("embeds") or [])
    if kwargs.get("embed") is not None:
        embeds.insert(0, kwargs["embed"])
    files = list(kwargs.get("files") or kwargs.get("attachments") or [])
    if kwargs.get("file") is not None:
        files.insert(0, kwargs["file"])
    mentions = kwargs.get("allowed_mentions") or interaction.client_allowed_mentions()
    ephemeral = bool(kwargs.get("ephemeral", interaction.deferred_ephemeral))
    return Sent(kind, content, embeds, kwargs.get("view"), files, ephemeral, mentions)


class StandInInteraction:
    """Enough of `discord.Interaction` for the cogs: the same attributes, recorded answers."""

    def __init__(
        self,
        client: Any,
        user: StandInUser,
        guild: StandInGuild | None,
        permissions: StandInPermissions,
        transcript: Transcript,
        modal_answers: dict[str, str] | None = None,
        channel_id: int = 1,
    ) -> None:
        self.client = client
        self.user = user
        self.guild = guild
        self.guild_id = guild.id if guild else None
        self.channel = StandInChannel(channel_id, guild)
        self.channel_id = channel_id
        self.permissions = permissions
        self.app_permissions = discord.Permissions.all()
        self.transcript = transcript
        self.modal_answers = dict(modal_answers or {})
        self.extras: dict[str, Any] = {}
        self.deferred_ephemeral = False
        self.response = StandInResponse(self)
        self.followup = StandInFollowup(self)
        self.locale = discord.Locale.american_english
        self.command: Any = None
        self.confirm_answer: str | None = None  # the console's `confirm:` option

    def follow_on(self) -> StandInInteraction:
        """The next interaction of the same member here (a modal's submit, a button)."""
        return StandInInteraction(
            self.client,
            self.user,
            self.guild,
            self.permissions,
            self.transcript,
            channel_id=self.channel_id,
        )

    def answer_view(self, view: Any) -> None:
        """A confirmation was asked: answer it as the command's `confirm:` option says
        (pressing its button, as the member would), or let it expire without one."""
        button = press(view, self.confirm_answer)
        if button is None:
            return
        if button == "expire":
            view.stop()  # value stays None: what a timeout leaves
            return
        clicker = self.follow_on()
        self._pressing = asyncio.ensure_future(button.callback(clicker))

    def client_allowed_mentions(self) -> discord.AllowedMentions | None:
        return getattr(self.client, "allowed_mentions", None)

    async def edit_original_response(self, content: str | None = None, **kwargs: Any) -> None:
        self.transcript.add(_sent("edit", content, kwargs, self))

    async def answer_modal(self, modal: discord.ui.Modal) -> None:
        """Fill the modal's fields from the answers (by field id) and submit it."""
        for item in modal.children:
            if isinstance(item, discord.ui.TextInput):
                if item.custom_id in self.modal_answers:
                    item._value = self.modal_answers[item.custom_id]  # what Discord's submit sets
        submit = self.follow_on()
        submit.extras = self.extras
        try:
            await modal.on_submit(submit)  # type: ignore[arg-type]
        except Exception as error:
            await modal.on_error(submit, error)  # type: ignore[arg-type]


class UsageError(Exception):
    """A console line that names no command, or an option Discord would not accept."""


def parse_line(line: str) -> tuple[list[str], dict[str, str]]:
    """`/agent create name:Nova prompt:"a b"` -> (["agent", "create"], {"name": ..., ...})."""
    try:
        tokens = shlex.split(line.strip().removeprefix("/"))
    except ValueError as error:
        raise UsageError(f"cannot read that line: {error}") from None
    path: list[str] = []
    options: dict[str, str] = {}
    for token in tokens:
        key, colon, value = token.partition(":")
        if colon and key and not options.get(key) and key.replace("_", "").isalnum():
            options[key] = value
        elif not options:
            path.append(token)
        else:
            raise UsageError(f"expected name:value, got {token!r}")
    if not path:
        raise UsageError("no command given")
    return path, options


class CommandRunner:
    """Runs slash commands against a bot's tree as one user, in a server or a DM."""

    def __init__(
        self,
        bot: Any,
        *,
        user_id: int,
        guild_id: int | None = None,
        owner_id: int | None = None,
        manage_guild: bool = False,
        roles: list[int] | None = None,
        attachment_loader: Callable[[str], StandInAttachment] = StandInAttachment.from_path,
    ) -> None:
        self.bot = bot
        # Role ids lowest first; their positions follow the list's order.
        self.user = StandInUser(
            user_id, roles=[StandInRole(r, n + 1) for n, r in enumerate(roles or [])]
        )
        self.guild = StandInGuild(guild_id, owner_id or user_id) if guild_id else None
        self.permissions = StandInPermissions(manage_guild=manage_guild)
        self.load_attachment = attachment_loader
        self.channel_id = 1
        # A channel object to run in instead of the plain stand-in one (tests use
        # subclasses of discord.TextChannel and discord.Thread here).
        self.channel: Any = None
        self.listener: Callable[[Sent], None] | None = None  # see Transcript

    def find(self, path: list[str]) -> app_commands.Command[Any, ..., Any]:
        found: Any = self.bot.tree.get_command(path[0])
        if found is None and self.guild is not None:  # registered in this server only
            found = self.bot.tree.get_command(path[0], guild=discord.Object(self.guild.id))
        for name in path[1:]:
            if not isinstance(found, app_commands.Group):
                break
            found = found.get_command(name)
        if not isinstance(found, app_commands.Command):
            raise UsageError(f"no command /{' '.join(path)}")
        return found

    async def run(self, line: str) -> list[Sent]:
        path, options = parse_line(line)
        return await self.invoke(path, options)

    async def invoke(self, path: list[str], options: dict[str, Any]) -> list[Sent]:
        command = self.find(path)
        options = dict(options)
        transcript = Transcript()
        transcript.listener = self.listener
        interaction = StandInInteraction(
            self.bot,
            self.user,
            self.guild,
            self.permissions,
            transcript,
            modal_answers={k: v for k, v in options.items() if isinstance(v, str)},
            channel_id=self.channel_id,
        )
        interaction.command = command
        confirm = options.pop("confirm", None)  # answers a confirmation, not an option
        interaction.confirm_answer = confirm if isinstance(confirm, str) else None
        if self.channel is not None:
            interaction.channel = self.channel
            interaction.channel_id = self.channel.id
        try:
            if not await command._check_can_run(interaction):  # type: ignore[arg-type]
                raise app_commands.CheckFailure(f"checks of /{command.qualified_name} failed")
            values = await self._convert(command, options, interaction)
            await command._do_call(interaction, values)  # type: ignore[arg-type]
        except app_commands.AppCommandError as error:
            await self.bot.tree.on_error(interaction, error)
        return transcript.sent

    async def _convert(
        self,
        command: app_commands.Command[Any, ..., Any],
        options: dict[str, Any],
        interaction: StandInInteraction,
    ) -> dict[str, Any]:
        params = command._params
        known = {p.display_name for p in params.values()}
        values: dict[str, Any] = {}
        for param in params.values():
            if param.display_name not in options:
                if param.required:
                    raise UsageError(f"/{command.qualified_name} needs {param.display_name}:")
                values[param.name] = param.default
                continue
            raw = options[param.display_name]
            value = self._option(param.type, raw, param.display_name)
            if param.choices:
                value = _chosen(param.display_name, param.choices, value)
            # Discord enforces these before the bot sees the command: for a string they
            # bound its length, for a number its value.
            size = len(value) if isinstance(value, str) else value
            unit = " characters" if isinstance(value, str) else ""
            if param.min_value is not None and size < param.min_value:
                raise UsageError(f"{param.display_name} must be at least {param.min_value}{unit}")
            if param.max_value is not None and size > param.max_value:
                raise UsageError(f"{param.display_name} must be at most {param.max_value}{unit}")
            values[param.name] = await param.transform(interaction, value)  # type: ignore[arg-type]
        leftovers = set(options) - known
        if leftovers and not getattr(command, "extras", {}).get("modal"):
            raise UsageError(f"/{command.qualified_name} has no option {sorted(leftovers)[0]}:")
        return values

    def _option(self, kind: Opt, raw: Any, name: str) -> Any:
        if not isinstance(raw, str):
            return raw  # tests may pass ready values (an attachment, a number)
        # Discord's client takes only what fits the option's type, and says so: never
        # Python's own words ("invalid literal for int() with base 10").
        match kind:
            case Opt.integer:
                return _within(name, int(_typed(name, raw, _INTEGER, "a whole number")))
            case Opt.number:
                return _within(name, float(_typed(name, raw, _NUMBER, "a number")))
            case Opt.boolean:
                # Discord offers True and False, nothing else.
                if raw.lower() not in {"true", "false"}:
                    raise UsageError(f"{name} must be true or false, not {raw!r}")
                return raw.lower() == "true"
            case Opt.attachment:
                try:
                    return self.load_attachment(raw)
                except OSError as error:
                    raise UsageError(f"{name}: cannot read {raw}: {error.strerror}") from None
            case Opt.user | Opt.mentionable:
                return StandInUser(int(_typed(name, raw, _USER, "a member (<@id> or an id)")))
            case Opt.role:
                return StandInRole(int(_typed(name, raw, _ROLE, "a role (<@&id> or an id)")))
            case Opt.channel:
                return StandInTextChannel(
                    int(_typed(name, raw, _CHANNEL, "a channel (<#id> or an id)"))
                )
            case _:
                return raw


_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_USER = re.compile(r"<@!?([0-9]{1,20})>|([0-9]{1,20})")
_ROLE = re.compile(r"<@&([0-9]{1,20})>|([0-9]{1,20})")
_CHANNEL = re.compile(r"<#([0-9]{1,20})>|([0-9]{1,20})")


def _typed(name: str, raw: str, shape: re.Pattern[str], what: str) -> str:
    """The value in `raw` (a mention's id), or the refusal Discord would give."""
    found = shape.fullmatch(raw.strip())
    if found is None:
        raise UsageError(f"{name} must be {what}, not {raw!r}")
    return next((g for g in found.groups() if g is not None), found.group(0))


# Discord's integer and number options are bounded by what JavaScript holds exactly.
_DISCORD_NUMBER = 2**53


def _within(name: str, value: float) -> float:
    if not -_DISCORD_NUMBER <= value <= _DISCORD_NUMBER:
        raise UsageError(f"{name} must be between -{_DISCORD_NUMBER} and {_DISCORD_NUMBER}")
    return value


def _chosen(name: str, choices: list[app_commands.Choice[Any]], value: Any) -> Any:
    """An option with choices takes one of them (Discord's client offers nothing else):
    typed by its name or its value, it is sent as its value."""
    for choice in choices:
        if value in (choice.value, choice.name):
            return choice.value
    names = ", ".join(str(c.name) for c in choices)
    raise UsageError(f"{name} must be one of: {names} (not {value!r})")
