"""One INFO line per paid call (issue 16, point 8); every step of it stays at DEBUG."""

from __future__ import annotations

import logging

import pytest

from bot.front.standin import CommandRunner


async def test_a_paid_call_is_one_info_line(
    owner: CommandRunner, caplog: pytest.LogCaptureFixture
) -> None:
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    with caplog.at_level(logging.DEBUG):
        await owner.run("/avatar generate agent:Nova")
    ours = [r for r in caplog.records if r.name.startswith("bot.")]
    info = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert len(info) == 1, info
    line = info[0]
    assert line.startswith("paid call: guild:1000 user 1 avatar_generation ")
    assert "5000 tokens, ok," in line and line.endswith(" ms")
    steps = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    assert any("Checking token balance" in s for s in steps)  # the seed's lines, at DEBUG
