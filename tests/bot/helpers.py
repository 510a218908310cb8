"""Small readers of what the stand-in recorded, and virtual time for a bot's chat."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bot.front.standin import Sent


class VirtualTime:
    """The wall clock plus every second slept: a streamed answer's throttling (one edit a
    second, the channel's budget) runs as in production but waits no real time."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def clock(self) -> float:
        return time.monotonic() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.skipped += max(0.0, seconds)
        await asyncio.sleep(0)


def on_virtual_time(bot: Any) -> VirtualTime:
    """Put the chat cog of `bot` (its cogs loaded) on a VirtualTime of its own."""
    virtual = VirtualTime()
    chat: Any = bot.get_cog("ChatCog")
    chat.clock, chat.sleep = virtual.clock, virtual.sleep
    return virtual


def text(sent: list[Sent]) -> str:
    return "\n".join(s.text() for s in sent if s.kind != "defer")


def assert_mentions_disabled(sent: list[Sent]) -> None:
    for s in sent:
        if s.kind in {"defer", "modal"}:
            continue
        mentions = s.allowed_mentions
        assert mentions is not None, f"{s.kind} sent without allowed_mentions"
        assert not mentions.everyone and not mentions.users and not mentions.roles
