"""The live answer: throttled edits on a fake clock, a per-channel budget, splitting past
2,000 characters without breaking code blocks, and the final text always whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import discord
import pytest

from bot.front.replies import MESSAGE_LIMIT, split_message
from bot.front.streaming import EditBudget, LiveAnswer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Shown:
    text: str
    edits: list[float] = field(default_factory=list)  # clock times of its edits


class RecordingSurface:
    def __init__(self, clock: FakeClock, log: list[float] | None = None) -> None:
        self.clock = clock
        self.messages: list[Shown] = []
        self.calls = log if log is not None else []  # clock times of every send and edit
        self.refuse_edits = 0  # that many edits fail with an HTTP error

    async def send(self, text: str) -> Shown:
        assert 0 < len(text) < MESSAGE_LIMIT
        self.calls.append(self.clock.now)
        message = Shown(text)
        self.messages.append(message)
        return message

    async def edit(self, message: Shown, text: str) -> None:
        assert 0 < len(text) < MESSAGE_LIMIT
        self.calls.append(self.clock.now)
        if self.refuse_edits:
            self.refuse_edits -= 1
            raise discord.HTTPException(_Response(429), "rate limited")
        message.edits.append(self.clock.now)
        message.text = text


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "Too Many Requests"


def _pieces(text: str) -> list[str]:
    return [text[i : i + 7] for i in range(0, len(text), 7)]


async def _stream(live: LiveAnswer, clock: FakeClock, text: str, step: float) -> None:
    for piece in _pieces(text):
        clock.now += step
        await live.add(piece)
    await live.finish()


ANSWER = "".join(f"Line {i}: the stars are far away, and light is slow.\n" for i in range(120))
CODE = (
    "Here is the program:\n```python\n"
    + "".join(f"print('step {i} of the long computation')\n" for i in range(90))
    + "```\nAnd that is all.\n"
)


def _visible(surface: RecordingSurface) -> list[str]:
    return [m.text for m in surface.messages]


@pytest.mark.parametrize("interval", [1.0, 2.5])
async def test_no_message_is_edited_more_than_once_per_interval(interval: float) -> None:
    clock = FakeClock()
    surface = RecordingSurface(clock)
    budget = EditBudget(1000, 5.0, clock)
    live = LiveAnswer(surface, 1, budget, interval=interval, clock=clock, sleep=clock.sleep)

    await _stream(live, clock, ANSWER, step=0.05)

    assert _visible(surface) == split_message(ANSWER)  # the final text, whole
    assert len(surface.messages) > 1  # it went past 2,000 characters
    for message in surface.messages:
        gaps = [b - a for a, b in zip(message.edits, message.edits[1:], strict=False)]
        assert all(gap >= interval - 1e-9 for gap in gaps), gaps
    assert live.edits > 3  # it streamed: the text grew in place


async def test_answers_in_one_channel_share_its_budget() -> None:
    clock = FakeClock()
    calls: list[float] = []
    budget = EditBudget(5, 5.0, clock)
    surfaces = [RecordingSurface(clock, calls) for _ in range(4)]
    lives = [
        LiveAnswer(s, 42, budget, interval=1.0, clock=clock, sleep=clock.sleep) for s in surfaces
    ]
    text = ANSWER[:1500]
    for piece in _pieces(text):
        clock.now += 0.05
        for live in lives:
            await live.add(piece)
    for live in lives:
        await live.finish()

    for surface in surfaces:
        assert _visible(surface) == [text.rstrip("\n")]
    # Never more than 5 sends and edits in any 5 seconds, for the four answers together.
    for i, start in enumerate(calls):
        assert sum(1 for t in calls[i:] if t < start + 5.0) <= 5


async def test_code_blocks_stay_whole_across_messages() -> None:
    clock = FakeClock()
    surface = RecordingSurface(clock)
    live = LiveAnswer(
        surface, 1, EditBudget(1000, 5.0, clock), interval=1.0, clock=clock, sleep=clock.sleep
    )
    await _stream(live, clock, CODE, step=0.2)

    parts = _visible(surface)
    assert parts == split_message(CODE) and len(parts) >= 2
    for part in parts:
        assert part.count("```") % 2 == 0, part[-80:]  # every block closed where it opens
    assert parts[1].startswith("```python\n")  # reopened with its language


async def test_the_final_text_is_delivered_even_when_edits_fail() -> None:
    clock = FakeClock()
    surface = RecordingSurface(clock)
    surface.refuse_edits = 1_000  # every edit is refused (rate limited)
    live = LiveAnswer(
        surface, 1, EditBudget(1000, 5.0, clock), interval=1.0, clock=clock, sleep=clock.sleep
    )
    await _stream(live, clock, ANSWER[:900], step=0.3)

    # The message that could not be edited is followed by a fresh copy of the whole part.
    assert surface.messages[-1].text == ANSWER[:900].rstrip("\n")


async def test_nothing_is_posted_for_an_empty_answer() -> None:
    clock = FakeClock()
    surface: Any = RecordingSurface(clock)
    live = LiveAnswer(surface, 1, EditBudget(5, 5.0, clock), clock=clock, sleep=clock.sleep)
    await live.add("   ")
    await live.finish()
    assert surface.messages == []
