"""What members read follows the configuration (issue 16, points 3 and 4): every plan
figure and price, and the sentence for an AI service that is set up wrong."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import bot.core.ai as ai_module
from bot.billing.apply import Outcome
from bot.config import Config, PlanSettings, short_tokens
from bot.errors import AIMisconfigured
from bot.front.standin import CommandRunner
from bot.http.webhooks.lemonsqueezy import notify
from bot.logs import Throttle
from bot.services import Services

ACCOUNT = "guild:1000"


@pytest.fixture
def app_config(app_config: Config) -> Config:
    app_config.plans.pro = PlanSettings(
        monthly_tokens=12_500_000, max_agents=20, price_label="$45/month"
    )
    app_config.plans.free = PlanSettings(monthly_tokens=300_000, max_agents=0)
    return app_config


def text(sent: list[Any]) -> str:
    return "\n".join(s.text() for s in sent)


async def test_every_plan_figure_comes_from_the_configuration(
    owner: CommandRunner, services: Services
) -> None:
    tokens = text(await owner.run("/tokens"))
    assert "Pro: 12,500,000 tokens a month and 20 agents, $45/month. /upgrade" in tokens
    upgrade = text(await owner.run("/upgrade"))
    assert "12,500,000 tokens a month and 20 agents" in upgrade
    assert "300,000 tokens a month and unlimited agents" in upgrade  # free: 0 = unlimited
    assert "0 agents" not in upgrade.replace("20 agents", "")
    help_text = text(await owner.run("/help"))
    assert "Pro: 12,500,000 tokens a month and 20 agents, $45/month." in help_text
    hold = await services.ledger.reserve(ACCOUNT, 299_000, "chat", 1, 1000, "m")
    await services.ledger.commit(hold, 299_000)
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    refusal = text(await owner.run("/avatar generate agent:Nova"))
    assert "Upgrade to Pro for 12.5M tokens!" in refusal
    for stale in ("10M", "10,000,000", "unlimited agents and"):
        assert stale not in tokens + upgrade + refusal + help_text


async def test_the_pro_notice_names_the_configured_allowance(app_config: Config) -> None:
    said: list[str] = []

    async def notifier(account: str, user: str | None, plan: str, message: str) -> None:
        said.append(message)

    outcome = Outcome("applied", ACCOUNT, "5", plan_before="free", plan_after="pro")
    await notify(notifier, outcome, app_config)
    assert said == ["🎉 Pro is active: 12,500,000 tokens a month and 20 agents. Thank you!"]


def test_short_tokens_in_the_spec_style() -> None:
    assert [short_tokens(n) for n in (10_000_000, 250_000, 12_500_000, 999)] == [
        "10M",
        "250K",
        "12.5M",
        "999",
    ]


@pytest.mark.parametrize("status", ["401", "403", "404"])
async def test_a_misconfigured_ai_is_not_busy_and_is_logged_once_an_hour(
    owner: CommandRunner,
    fake_openai: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    status: str,
) -> None:
    monkeypatch.setattr(ai_module, "_MISCONFIGURED", Throttle(3600.0))
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    fake_openai.fail_next("images", status, times=3)
    with caplog.at_level(logging.ERROR, logger="bot.core.ai"):
        answers = [text(await owner.run("/avatar generate agent:Nova")) for _ in range(3)]
    for answer in answers:
        assert AIMisconfigured().user_message in answer
        assert "busy" not in answer
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # not once per member's call
    fix = {"401": "OPENAI_API_KEY", "403": "access", "404": "openai.image_model"}[status]
    assert fix in errors[0].getMessage()
