"""Low-balance alerts: at 20% and at 0% left, once each per period (recorded in the
ledger, so a restart does not repeat them), to the managers' channel or the owner's DMs,
with the checkout link."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bot.config import Config
from bot.core.ai import AIGateway
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner
from bot.services import Services
from tests.bot.conftest import GUILD, MANAGER, OWNER

ACCOUNT = f"guild:{GUILD}"


class Inbox:
    """A channel or a user: records what is sent to it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, content: str, **kwargs: Any) -> None:
        self.sent.append((content, kwargs))


def _buttons(kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    view = kwargs.get("view")
    return [(b.label, b.url) for b in view.children] if view else []


async def _spend_to(services: Services, used: int) -> None:
    balance = await services.ledger.balance(ACCOUNT)
    amount = used - balance.tokens_used
    hold = await services.ledger.reserve(ACCOUNT, amount, "chat", 50, GUILD)
    await services.ledger.commit(hold, amount)


@pytest.fixture
def places(bot: AgentBot, monkeypatch: pytest.MonkeyPatch) -> dict[str, Inbox]:
    found = {"channel": Inbox(), "owner": Inbox()}
    guild = SimpleNamespace(id=GUILD, owner_id=OWNER)
    monkeypatch.setattr(bot, "get_guild", lambda gid: guild if gid == GUILD else None)
    monkeypatch.setattr(bot, "get_channel", lambda cid: found["channel"] if cid == 900 else None)

    async def fetch_user(uid: int) -> Inbox:
        assert uid == OWNER
        return found["owner"]

    monkeypatch.setattr(bot, "fetch_user", fetch_user)
    return found


@pytest.fixture
async def nova(owner: CommandRunner) -> None:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')


async def test_each_threshold_alerts_the_chosen_channel_once(
    owner: CommandRunner,
    as_user: Any,
    services: Services,
    places: dict[str, Inbox],
    fake_openai: Any,
    nova: None,
) -> None:
    await as_user(MANAGER, manage=True).run("/limits alerts channel:<#900>")
    await _spend_to(services, 196_000)
    await owner.run("/avatar generate agent:Nova")  # 49,000 left: under 20%
    await services.meter.drain()
    ((text, kwargs),) = places["channel"].sent
    resets = (await services.ledger.balance(ACCOUNT)).period_end
    assert text == (
        "⚠️ This server has 49,000 of its 250,000 monthly tokens left (under 20%). "
        f"It resets {resets:%B} {resets.day}, {resets.year}. /upgrade for more."
    )
    ((label, url),) = _buttons(kwargs)
    assert label == "Upgrade to Pro" and url.startswith("https://shop.example/checkout/buy/pro?")
    assert f"checkout%5Bcustom%5D%5Baccount_id%5D={ACCOUNT.replace(':', '%3A')}" in url
    mentions = kwargs["allowed_mentions"]
    assert not mentions.everyone and not mentions.users and not mentions.roles

    await owner.run("/avatar generate agent:Nova")  # still under 20%: nothing new
    await services.meter.drain()
    assert len(places["channel"].sent) == 1

    await _spend_to(services, 247_000)
    sent = await owner.run("/avatar generate agent:Nova")  # refused: too few left
    await services.meter.drain()
    assert len(places["channel"].sent) == 2
    assert (
        places["channel"]
        .sent[1][0]
        .startswith("⚠️ This server has used its monthly allowance of 250,000 tokens (3,000 left")
    )
    await owner.run("/avatar generate agent:Nova")
    await services.meter.drain()
    assert len(places["channel"].sent) == 2
    assert places["owner"].sent == []
    assert sent


async def test_without_a_channel_the_owner_gets_a_dm(
    owner: CommandRunner, services: Services, places: dict[str, Inbox], fake_openai: Any, nova: None
) -> None:
    await _spend_to(services, 246_000)
    await owner.run("/avatar generate agent:Nova")  # leaves 0 exactly: both thresholds
    await services.meter.drain()
    ((text, _),) = places["owner"].sent  # the most severe one only
    assert "has used its monthly allowance" in text
    assert places["channel"].sent == []


async def test_alerts_are_not_repeated_after_a_restart(
    app_config: Config, services: Services, places: dict[str, Inbox], fake_openai: Any
) -> None:
    await _spend_to(services, 199_000)  # 51,000 left: above 20%
    hold = await services.ledger.reserve(ACCOUNT, 2_000, "chat", 50, GUILD)
    resolution = await services.ledger.commit(hold, 2_000)
    assert [a.threshold for a in resolution.alerts] == [20]

    again = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        hold = await again.ledger.reserve(ACCOUNT, 1_000, "chat", 50, GUILD)
        assert (await again.ledger.commit(hold, 1_000)).alerts == ()
        assert await again.ledger.note_refusal(ACCOUNT) != ()  # 0% is still to come
        assert await again.ledger.note_refusal(ACCOUNT) == ()
    finally:
        await again.close()


async def test_the_console_prints_an_alert_after_the_command_that_raised_it(
    tmp_path: Any, app_config: Config, services: Services, fake_openai: Any
) -> None:
    import io

    from bot.front.console import run_console

    await _spend_to(services, 196_000)
    output = io.StringIO()
    script = '/agent create name:Nova prompt:"A patient astronomer"\n/avatar generate agent:Nova\n'
    await run_console(
        app_config,
        user_id=OWNER,
        guild_id=GUILD,
        out_dir=tmp_path / "out",
        lines=io.StringIO(script),
        output=output,
        services=services,
    )
    printed = output.getvalue()
    assert printed.count("(low-balance alert, to a DM to the owner)") == 1
    assert "⚠️ This server has 49,000 of its 250,000 monthly tokens left" in printed
    assert "[Upgrade to Pro](https://shop.example/checkout/buy/pro?" in printed
    assert printed.index("Avatar generated") < printed.index("low-balance alert")


async def test_the_alert_links_the_token_packs_where_the_store_sells_them(
    owner: CommandRunner,
    services: Services,
    places: dict[str, Inbox],
    fake_openai: Any,
    nova: None,
) -> None:
    shop = services.config.lemonsqueezy
    shop.packs = {"501": 500_000, "502": 100_000}
    shop.pack_checkout_urls = {
        "501": "https://shop.example/checkout/buy/big",
        "502": "https://shop.example/checkout/buy/small",
    }
    await _spend_to(services, 196_000)
    await owner.run("/avatar generate agent:Nova")  # under 20%: the owner is told
    await services.meter.drain()
    ((_, kwargs),) = places["owner"].sent
    buttons = _buttons(kwargs)
    assert [label for label, _ in buttons] == [
        "Upgrade to Pro",
        "100,000 tokens",
        "500,000 tokens",
    ]
    assert buttons[1][1].startswith("https://shop.example/checkout/buy/small?")
    assert buttons[2][1].startswith("https://shop.example/checkout/buy/big?")
    assert all("account_id%5D=guild%3A" in url for _, url in buttons)
