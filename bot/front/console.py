"""`python -m bot console --user ID [--guild ID [--member]]`: slash commands from
standard input, one a line, run through the very same cogs as the bot; prints what the
bot would send, with Discord's markup rendered as the client shows it (bot/front/markup).
In a server the user is its owner, or with `--member` a member without Manage Server.
Files the bot would attach are saved into `--out` once per content, and their paths
printed. Interactive, it greets with a banner. `/help` runs the real /help (every command
with its cost, the plan, the balance, the upgrade link) as text, then how each command is
typed here; `help` alone prints only the latter."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path
from typing import IO

import discord

from bot.config import Config
from bot.front.alerts import links
from bot.front.app import AgentBot
from bot.front.markup import plain
from bot.front.standin import CommandRunner, Sent, UsageError
from bot.services import Services
from ledger import BalanceAlert


def render(sent: Sent, out_dir: Path, *, text_last: bool = False) -> str:
    """One answer as the member would read it. `text_last`: its files before its text, so
    edits that extend the text can go on printing on the same line."""
    if sent.kind == "defer":
        return "(thinking…)"
    if sent.kind == "modal":
        return f"(form: {sent.content})"
    lines = []
    if sent.ephemeral:
        lines.append("(only you can see this)")
    files = [f"file: {save(file, out_dir)}" for file in sent.files]
    if text_last:
        lines += files
    if sent.text():
        lines.append(plain(sent.text()))
    for label, url in sent.buttons():
        lines.append(f"[{label}]({url})" if url else f"[{label}]")
    if not text_last:
        lines += files
    return "\n".join(lines)


class StreamPrinter:
    """Prints each answer as it happens. An edit that only extends its message prints
    what it adds, so a streamed answer reads as it is written, not once per edit."""

    def __init__(self, output: IO[str], out_dir: Path) -> None:
        self.output = output
        self.out_dir = out_dir
        self.shown: dict[int, str] = {}  # id of a message as first sent -> its text now
        self.mid_line = False

    def __call__(self, sent: Sent) -> None:
        now = sent.text()
        before = self.shown.get(id(sent.of)) if sent.of is not None else None
        if sent.kind == "edit" and before is not None and now.startswith(before):
            print(now[len(before) :], end="", file=self.output, flush=True)
            self.shown[id(sent.of)] = now
            self.mid_line = True
            return
        if self.mid_line:
            print(file=self.output)
            self.mid_line = False
        streamable = sent.kind == "followup" and bool(now) and not sent.buttons()
        # A message that may grow (a streamed answer) ends on its text, with no newline:
        # the edits that extend it continue the line.
        shown = render(sent, self.out_dir, text_last=streamable)
        print(shown, end="" if streamable else "\n", file=self.output, flush=True)
        self.mid_line = streamable
        self.shown[id(sent.of or sent)] = now

    def end(self) -> None:
        if self.mid_line:
            print(file=self.output, flush=True)
            self.mid_line = False


def save(file: discord.File, out_dir: Path) -> Path:
    """Named by content: the same avatar on every reply is one file, written once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    file.reset()
    data = file.fp.read()
    name = Path(file.filename or "file").name
    path = out_dir / f"{hashlib.sha256(data).hexdigest()[:12]}-{name}"
    if not path.exists():
        path.write_bytes(data)
    return path


def banner(user_id: int, guild_id: int | None, member: bool) -> str:
    if guild_id is None:
        where = f"user {user_id} in a DM with the bot"
    else:
        role = "a member without Manage Server" if member else "the server's owner"
        where = f"user {user_id} in server {guild_id}, as {role}"
    return (
        f"Agent bot console: slash commands as {where}.\n"
        "/help lists the commands with their costs and your plan; "
        'e.g. /agent create name:Nova prompt:"You are kind". Ctrl-D quits.'
    )


CONSOLE_SYNTAX = "\nTyped here (options as name:value, optional ones in brackets):\n"


def help_text(bot: AgentBot, guild_id: int | None) -> str:
    """Every command a member could type here, with its options (optional in brackets)."""
    commands = list(bot.tree.walk_commands())
    if guild_id is not None:  # and those registered in this server only
        commands += bot.tree.walk_commands(guild=discord.Object(guild_id))
    lines = set()
    for command in commands:
        if isinstance(command, discord.app_commands.Command):
            options = " ".join(
                f"{p.display_name}:" if p.required else f"[{p.display_name}:]"
                for p in command.parameters
            )
            usage = f"/{command.qualified_name} {options}".rstrip()
            lines.add(f"{usage}  ({command.description})")
    return "\n".join(sorted(lines))


async def run_console(
    config: Config,
    *,
    user_id: int,
    guild_id: int | None,
    out_dir: Path,
    lines: IO[str],
    output: IO[str],
    services: Services | None = None,
    member: bool = False,
) -> int:
    own_services = services is None
    services = services or await Services.open(config, kind="console")
    # A live console renews its lease like every front end: without it, a sweeper in the
    # sidecar or the bot takes its holds for a dead process's and expires them mid-call.
    services.ledger.start_maintenance()
    bot = AgentBot(config, services)
    try:
        await bot.load_cogs()
        # --member: the server's owner is someone else, and Manage Server is not given.
        owner = user_id + 1 if member else user_id
        runner = CommandRunner(bot, user_id=user_id, guild_id=guild_id, owner_id=owner)
        if lines.isatty():
            print(banner(user_id, guild_id, member), file=output, flush=True)

        # An alert is delivered in the background while its command may still be
        # answering (reads run side by side on the reader pool): it is kept here and
        # printed once the command is done, so it always follows the command's output.
        alerts: list[str] = []

        async def print_alert(alert: BalanceAlert) -> None:
            notice = await services.limits.notice(alert)
            if notice is not None:
                where = f"<#{notice.channel_id}>" if notice.channel_id else "a DM to the owner"
                found = await links(services, notice, user_id)
                shown = "".join(f"\n[{label}]({url})" for label, url in found)
                alerts.append(f"(low-balance alert, to {where}) {notice.text}{shown}")

        def print_alerts() -> None:
            for text in alerts:
                print(text, file=output)
            alerts.clear()

        services.meter.on_alert = print_alert
        printer = StreamPrinter(output, out_dir)
        runner.listener = printer
        # Read in a thread: a loop blocked on standard input would renew no lease.
        while line := await asyncio.to_thread(lines.readline):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            print(f"> {line}", file=output)
            if line == "help":
                print(help_text(bot, guild_id), file=output, flush=True)
                continue
            try:
                await runner.run(line)  # the printer shows each answer as it comes
                if line == "/help":  # /help's costs and plan, then how to type each here
                    print(CONSOLE_SYNTAX + help_text(bot, guild_id), file=output, flush=True)
            except UsageError as error:
                print(f"error: {error}", file=output)
                continue
            finally:
                printer.end()
            await services.meter.drain()  # an alert the command raised prints after it
            print_alerts()
            output.flush()
        await services.meter.drain()
        print_alerts()
    finally:
        if own_services:
            await services.close()
    return 0


def main(config: Config, user_id: int, guild_id: int | None, out: str, member: bool = False) -> int:
    return asyncio.run(
        run_console(
            config,
            user_id=user_id,
            guild_id=guild_id,
            out_dir=Path(out),
            lines=sys.stdin,
            output=sys.stdout,
            member=member,
        )
    )
