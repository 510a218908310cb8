"""`python -m bot console --user ID [--guild ID]`: slash commands from standard input,
one a line, run through the very same cogs as the bot; prints what the bot would send.
Files the bot would attach are saved into `--out` and their paths printed."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import IO

import discord

from bot.config import Config
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, Sent, UsageError
from bot.services import Services


def render(sent: Sent, out_dir: Path) -> str:
    """One answer as the member would read it."""
    if sent.kind == "defer":
        return "(thinking…)"
    if sent.kind == "modal":
        return f"(form: {sent.content})"
    lines = []
    if sent.ephemeral:
        lines.append("(only you can see this)")
    if sent.text():
        lines.append(sent.text())
    for label, url in sent.buttons():
        lines.append(f"[{label}]({url})" if url else f"[{label}]")
    for file in sent.files:
        lines.append(f"file: {save(file, out_dir)}")
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
        print(render(sent, self.out_dir), file=self.output, flush=True)
        self.shown[id(sent.of or sent)] = now

    def end(self) -> None:
        if self.mid_line:
            print(file=self.output, flush=True)
            self.mid_line = False


def save(file: discord.File, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = file.filename or "file"
    path = out_dir / f"{uuid.uuid4().hex[:8]}-{name}"
    file.reset()
    path.write_bytes(file.fp.read())
    return path


async def run_console(
    config: Config,
    *,
    user_id: int,
    guild_id: int | None,
    out_dir: Path,
    lines: IO[str],
    output: IO[str],
    services: Services | None = None,
) -> int:
    own_services = services is None
    services = services or await Services.open(config, kind="console")
    bot = AgentBot(config, services)
    try:
        await bot.load_cogs()
        runner = CommandRunner(bot, user_id=user_id, guild_id=guild_id)
        printer = StreamPrinter(output, out_dir)
        runner.listener = printer
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            print(f"> {line}", file=output)
            try:
                await runner.run(line)  # the printer shows each answer as it comes
            except UsageError as error:
                print(f"error: {error}", file=output)
                continue
            finally:
                printer.end()
            output.flush()
    finally:
        if own_services:
            await services.close()
    return 0


def main(config: Config, user_id: int, guild_id: int | None, out: str) -> int:
    return asyncio.run(
        run_console(
            config,
            user_id=user_id,
            guild_id=guild_id,
            out_dir=Path(out),
            lines=sys.stdin,
            output=sys.stdout,
        )
    )
