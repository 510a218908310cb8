"""/usage and `ledger usage`: this period's figures equal the ledger's charges; the chart
is a PNG of the checked size with its axes and allowance line where the geometry says."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

from bot.cli import main
from bot.config import Config
from bot.core.usage_chart import ALLOWANCE, AXIS, DAILY, HEIGHT, WIDTH, daily_chart
from bot.front.console import run_console
from bot.front.standin import CommandRunner
from bot.services import Services
from tests.bot.conftest import GUILD, MANAGER, MEMBER, OWNER
from tests.bot.helpers import text

ACCOUNT = f"guild:{GUILD}"
Make = Callable[..., CommandRunner]


async def _spend(services: Services, user: int, tokens: int, agent: str | None = None) -> None:
    ledger = services.ledger
    hold = await ledger.reserve(ACCOUNT, tokens, "chat", user, GUILD, "m", agent=agent)
    await ledger.commit(hold, tokens)


async def _charges(services: Services) -> list[Any]:
    return [e for e in await services.ledger.history(ACCOUNT, 1_000) if e.status == "charged"]


@pytest.fixture
async def busy(services: Services, owner: CommandRunner, fake_openai: Any) -> None:
    """Twelve members, two agents, two operations, spread over three days."""
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
    await owner.run("/avatar generate agent:Nova")  # 5,000 by the owner, agent Nova
    clock = services.ledger.clock
    for n in range(12):
        await _spend(services, 100 + n, 1_000 * (n + 1), "Nova" if n % 2 else "Mia")
        if n % 4 == 3:
            services.ledger.clock = _Later(clock, days=n // 4 + 1)
    services.ledger.clock = clock


class _Later:
    def __init__(self, clock: Any, days: int) -> None:
        self.clock, self.delta = clock, timedelta(days=days)

    def now(self) -> Any:
        return self.clock.now() + self.delta


async def test_managers_see_the_servers_figures_equal_to_the_ledgers_charges(
    as_user: Make, services: Services, busy: None
) -> None:
    sent = await as_user(MANAGER, manage=True).run("/usage")
    assert sent[0].kind == "defer" and all(s.ephemeral for s in sent)
    report = await services.usage.report(services_actor(MANAGER))
    charges = await _charges(services)
    assert report.total == sum(e.tokens_used for e in charges) == 5_000 + 78_000
    assert sum(n for _, n in report.by_member) + report.others == report.total
    assert (
        len(report.by_member) == 10 and report.others == 1_000 + 2_000 + 3_000
    )  # the three smallest
    assert sum(n for _, n in report.by_agent) == report.total
    assert dict(report.by_operation) == {"chat": 78_000, "avatar_generation": 5_000}
    assert sum(n for _, n in report.by_day) == report.total and len(report.by_day) == 3

    shown = text(sent)
    assert "83,000 tokens used of the 250,000 allowance (33%)" in shown
    assert "<@111>: 12,000" in shown and "Others: 6,000" in shown
    assert "Nova: " in shown and "Mia: " in shown
    assert "Avatar generation: 5,000" in shown
    (file,) = sent[-1].files
    assert file.filename == "usage.png"
    assert sent[-1].embeds[0].image.url == "attachment://usage.png"
    _check_png(file, report.balance.tokens_limit)


def services_actor(user: int) -> Any:
    from bot.core.metering import Actor

    return Actor(ACCOUNT, user, GUILD, can_manage=True)


def _check_png(file: discord.File, allowance: int) -> None:
    file.reset()
    data = file.fp.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.verify()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)


def test_the_chart_draws_its_axes_bars_and_allowance_line_where_it_says() -> None:
    from datetime import UTC, datetime

    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    chart = daily_chart(
        [("2026-12-01", 50_000), ("2026-12-03", 25_000)],
        start,
        datetime(2027, 1, 1, 9, tzinfo=UTC),
        100_000,
    )
    image = Image.open(io.BytesIO(chart.png)).convert("RGB")
    assert image.size == (chart.width, chart.height) == (WIDTH, HEIGHT)
    assert chart.days == 32  # Dec 1 to the morning of Jan 1
    left, top, right, bottom = chart.plot
    assert image.getpixel((left, (top + bottom) // 2)) == AXIS  # the y axis
    assert image.getpixel(((left + right) // 2, bottom)) == AXIS  # the x axis
    # The allowance (100,000) sits at 1/1.1 of the plot's height above the x axis.
    expected = round(bottom - (bottom - top) * 100_000 / 110_000)
    assert chart.allowance_y == expected
    assert ALLOWANCE in {image.getpixel((x, expected)) for x in range(left + 2, left + 30)}
    # Day 1's bar reaches half the allowance, in the dark colour of its own usage.
    slot = (right - left) / chart.days
    middle = round(left + slot / 2)
    half = round(bottom - (bottom - top) * 50_000 / 110_000)
    assert image.getpixel((middle, half + 3)) == DAILY
    assert image.getpixel((middle, half - 3)) != DAILY


async def test_members_see_their_own_usage_and_cap(
    as_user: Make, services: Services, busy: None
) -> None:
    await as_user(MANAGER, manage=True).run("/limits default amount:20000")
    sent = await as_user(105).run("/usage")
    assert all(s.ephemeral for s in sent) and not sent[-1].files
    assert (
        "You have used 6,000 of the 20,000 tokens this server gives you this month; 14,000 left."
        in text(sent)
    )
    sent = await as_user(MEMBER).run("/usage")
    assert "You have used 0 of the 20,000" in text(sent)


async def test_the_cli_gives_operators_the_same_figures(
    services: Services,
    busy: None,
    app_config: Config,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_STORAGE__DATABASE", app_config.storage.database)
    report = await services.usage.report(services_actor(MANAGER))
    for by, expected in (
        ("agent", report.by_agent),
        ("operation", report.by_operation),
        ("day", report.by_day),
    ):
        assert (
            await asyncio.to_thread(main, ["ledger", "usage", ACCOUNT, "--by", by, "--json"]) == 0
        )
        shown = json.loads(capsys.readouterr().out)
        assert shown["total"] == report.total
        assert [(r[by] or "", r["tokens"]) for r in shown["rows"]] == expected
    assert await asyncio.to_thread(main, ["ledger", "usage", ACCOUNT]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["member", "tokens"] and len(lines) == 15  # 13 members
    assert lines[-1].split() == ["total", str(report.total)]


async def test_the_console_saves_the_chart_into_out(
    tmp_path: Path, app_config: Config, services: Services, busy: None
) -> None:
    output = io.StringIO()
    await run_console(
        app_config,
        user_id=OWNER,
        guild_id=GUILD,
        out_dir=tmp_path / "out",
        lines=io.StringIO("/usage\n"),
        output=output,
        services=services,
    )
    (saved,) = (tmp_path / "out").glob("*usage.png")
    assert f"file: {saved}" in output.getvalue()
    assert Image.open(saved).size == (WIDTH, HEIGHT)
