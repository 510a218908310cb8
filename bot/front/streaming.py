"""An answer that grows in place as it is written, within Discord's limits.

Promises:
- A message is edited at most once per `interval` seconds, and every message of one
  channel draws on that channel's budget (`EditBudget`: so many sends and edits per
  window), so many answers at once in a channel do not trip Discord's rate limits. Text
  that arrives between two allowed edits waits for the next one.
- Past 2,000 characters the answer goes on in a new message, split by `split_message`
  (code blocks closed and reopened), so every message renders on its own.
- `finish` delivers the final text whole: it waits out the interval and the budget (it
  never skips them), edits what differs, and sends afresh any part whose message could
  not be edited (an edit refused or rate limited).
- The destination is a `Surface` (an interaction's followups, a thread, a webhook): this
  module knows messages, not where they live. The clock and the sleep are injectable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord

from bot.errors import BotError
from bot.front.replies import split_message

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Gone(BotError):
    """The place the answer was going to no longer exists (the thread was deleted)."""

    def __init__(self) -> None:
        super().__init__(
            "This conversation's thread is gone; what was written until then was charged."
        )


class Surface(Protocol):
    """Where the messages of one answer go."""

    async def send(self, text: str) -> Any:
        """Post a new message with `text`; returns what `edit` needs."""
        ...

    async def edit(self, message: Any, text: str) -> None: ...


class EditBudget:
    """At most `per_window` sends and edits in any `window` seconds, per channel."""

    def __init__(self, per_window: int, window: float, clock: Clock = time.monotonic) -> None:
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._used: dict[int, deque[float]] = {}

    def _recent(self, channel_id: int) -> deque[float]:
        stamps = self._used.get(channel_id)
        if stamps is None:
            return deque()
        now = self.clock()
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:  # a quiet channel is forgotten: the map holds busy channels only
            del self._used[channel_id]
        return stamps

    def wait_for(self, channel_id: int) -> float:
        """Seconds until the channel may send or edit again (0: now)."""
        stamps = self._recent(channel_id)
        if len(stamps) < self.per_window:
            return 0.0
        return max(0.0, stamps[0] + self.window - self.clock())

    def take(self, channel_id: int) -> bool:
        if self.wait_for(channel_id) > 0:
            return False
        self._used.setdefault(channel_id, deque()).append(self.clock())
        return True


class LiveAnswer:
    """One answer streaming into a surface: `add` pieces as they come, then `finish`."""

    def __init__(
        self,
        surface: Surface,
        channel_id: int,
        budget: EditBudget,
        *,
        interval: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.surface = surface
        self.channel_id = channel_id
        self.budget = budget
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.text = ""
        self.messages: list[Any] = []  # one per part shown, in order
        self.shown: list[str] = []  # the text each message shows
        self.edited_at: list[float] = []
        self.broken: set[int] = set()  # parts whose message refused an edit
        self.edits = 0
        self.sends = 0
        self.gone = False
        self._next = 0.0  # no touching Discord before this (clock time): skip the work

    async def add(self, piece: str) -> None:
        self.text += piece
        if self.clock() < self._next:
            return  # neither an edit nor a send is allowed yet: don't even split
        await self._show(final=False)
        wait = self.budget.wait_for(self.channel_id)
        if self.edited_at:
            wait = max(wait, self.edited_at[-1] + self.interval - self.clock())
        self._next = self.clock() + wait

    async def finish(self, tail: str = "") -> None:
        """Show the whole text (plus `tail`, e.g. the sources line), whatever happened."""
        self.text += tail
        await self._show(final=True)

    async def _show(self, *, final: bool) -> None:
        if not self.text.strip():
            return
        parts = split_message(self.text)
        for index, part in enumerate(parts):
            if index in self.broken and not final:
                continue  # sent afresh at the end, once
            if index < len(self.shown) and self.shown[index] == part and index not in self.broken:
                continue
            if index >= len(self.messages) or index in self.broken:
                if not await self._allowed(final, None):
                    return
                if not await self._send(index, part, final):
                    return
            else:
                if not await self._allowed(final, index):
                    return
                await self._edit(index, part)

    async def _allowed(self, final: bool, index: int | None) -> bool:
        """May we touch Discord now? Streaming skips when not; the final pass waits."""
        while True:
            wait = self.budget.wait_for(self.channel_id)
            if index is not None:
                wait = max(wait, self.edited_at[index] + self.interval - self.clock())
            if wait <= 0:
                return self.budget.take(self.channel_id)
            if not final:
                return False
            await self.sleep(wait)

    async def _send(self, index: int, part: str, final: bool) -> bool:
        try:
            message = await self.surface.send(part)
        except discord.NotFound:
            self.gone = True
            raise Gone() from None
        except discord.HTTPException as error:
            if final:
                raise  # the caller says what the member was charged, and where to read it
            log.info("could not post a streamed message (%s)", getattr(error, "status", "?"))
            return False  # tried again with the next piece, or at the end
        self.sends += 1
        if index < len(self.messages):  # a fresh copy of a part whose edit failed
            self.messages[index] = message
            self.shown[index] = part
            self.edited_at[index] = self.clock()
            self.broken.discard(index)
        else:
            self.messages.append(message)
            self.shown.append(part)
            self.edited_at.append(self.clock())
        return True

    async def _edit(self, index: int, part: str) -> None:
        self.edited_at[index] = self.clock()
        try:
            await self.surface.edit(self.messages[index], part)
        except discord.NotFound:
            self.gone = True
            raise Gone() from None
        except discord.HTTPException as error:
            # Rate limited or refused: the part is sent afresh when the answer finishes.
            log.info("could not edit a streamed message (%s)", getattr(error, "status", "?"))
            self.broken.add(index)
            return
        self.edits += 1
        self.shown[index] = part
