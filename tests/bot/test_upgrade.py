"""/upgrade and the LemonSqueezy API client, against a fake API on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from bot.front.standin import CommandRunner
from bot.services import Services
from tests.bot.conftest import GUILD, MANAGER, MEMBER, OWNER
from tests.bot.helpers import text
from tests.children import bot_env


@pytest.fixture
def with_api(services: Services, fake_lemonsqueezy: Any) -> Any:
    ls = services.config.lemonsqueezy
    ls.api_url, ls.store_id, ls.variant_id = fake_lemonsqueezy.url, "12", "34"
    services.config.secrets.lemonsqueezy_api_key = SecretStr("ls-test-key")
    return fake_lemonsqueezy


async def test_checkout_request_is_json_api(owner: CommandRunner, with_api: Any) -> None:
    sent = await owner.run("/upgrade")
    assert sent[-1].ephemeral
    assert sent[-1].buttons() == [("Upgrade to Pro", "https://shop.example/checkout/custom/c-1")]
    [request] = with_api.requests
    assert request.method == "POST" and request.path == "/v1/checkouts"
    assert request.headers["Authorization"] == "Bearer ls-test-key"
    assert request.headers["Accept"] == "application/vnd.api+json"
    assert request.headers["Content-Type"].startswith("application/vnd.api+json")
    data = request.body["data"]
    assert data["type"] == "checkouts"
    assert data["attributes"]["checkout_data"]["custom"] == {
        "account_id": f"guild:{GUILD}",
        "user_id": "1",
    }
    assert data["attributes"]["expires_at"]
    assert data["relationships"]["store"]["data"] == {"type": "stores", "id": "12"}
    assert data["relationships"]["variant"]["data"] == {"type": "variants", "id": "34"}


async def test_checkout_failure_is_a_clear_message(
    owner: CommandRunner, with_api: Any, services: Services
) -> None:
    with_api.fail_status = 500
    sent = await owner.run("/upgrade")
    assert "payment service can't be reached" in text(sent) and "nothing was changed" in text(sent)
    assert (await services.ledger.balance(f"guild:{GUILD}")).plan_type == "free"


async def test_unreachable_api(owner: CommandRunner, services: Services) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    ls = services.config.lemonsqueezy
    ls.api_url, ls.store_id, ls.variant_id = f"http://127.0.0.1:{port}", "1", "2"
    services.config.secrets.lemonsqueezy_api_key = SecretStr("k")
    sent = await owner.run("/upgrade")
    assert "can't be reached" in text(sent)


async def test_static_link_without_api_key(owner: CommandRunner) -> None:
    sent = await owner.run("/upgrade")
    [(_label, url)] = sent[-1].buttons()
    query = parse_qs(urlsplit(url or "").query)
    assert query["checkout[custom][account_id]"] == [f"guild:{GUILD}"]
    assert query["checkout[custom][user_id]"] == ["1"]


async def test_members_see_who_can_upgrade(
    as_user: Callable[..., CommandRunner], with_api: Any
) -> None:
    sent = await as_user(MEMBER).run("/upgrade")
    assert "Only the server owner or a member with Manage Server" in text(sent)
    assert not sent[-1].buttons() and with_api.requests == []


async def test_dm_upgrades_the_users_own_account(
    as_user: Callable[..., CommandRunner], with_api: Any
) -> None:
    await as_user(MEMBER, guild_id=None).run("/upgrade")
    custom = with_api.requests[0].body["data"]["attributes"]["checkout_data"]["custom"]
    assert custom == {"account_id": f"user:{MEMBER}", "user_id": str(MEMBER)}


async def test_already_pro_gets_a_fresh_portal_link(
    owner: CommandRunner, with_api: Any, services: Services
) -> None:
    await _pro_through(services, "808", user_id=str(OWNER))
    sent = await owner.run("/upgrade")
    assert "on Pro; it renews <t:" in text(sent)
    assert sent[-1].buttons() == [
        ("Manage subscription", "https://shop.example/billing?sub=808&expires=fresh")
    ]
    assert with_api.requests[-1].path == "/v1/subscriptions/808"


def test_sidecar_runs_alone(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = bot_env(BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"), BOT_WEBHOOKS__PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "webhooks"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once it listens
        assert line.startswith("listening on http://127.0.0.1:"), (
            process.stderr.read() if process.stderr else ""
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200 and b'"database": true' in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


async def _pro_through(services: Services, sub_id: str, user_id: str, **fields: Any) -> None:
    from tests.billing.conftest import deliver
    from tests.billing.payloads import PRO_VARIANTS, STORE_ID, subscription

    services.config.lemonsqueezy.pro_variant_ids = list(PRO_VARIANTS)
    services.config.lemonsqueezy.store_id = STORE_ID
    payload = subscription(
        fields.pop("event", "subscription_created"), sub_id=sub_id, user_id=user_id, **fields
    )
    assert (await deliver(services.ledger, services.config, payload)).outcome == "applied"


async def test_a_member_of_a_pro_server_gets_no_portal_link(
    as_user: Callable[..., CommandRunner], with_api: Any, services: Services
) -> None:
    """Issue 10, finding 2: the portal URL is a login to the buyer's billing."""
    await _pro_through(services, "809", user_id=str(OWNER))
    sent = await as_user(MEMBER).run("/upgrade")
    assert "This server is on Pro until <t:" in text(sent)
    assert not sent[-1].buttons()
    assert with_api.requests == []  # no portal URL was even fetched


async def test_the_buyer_gets_the_portal_link_without_manage_server(
    as_user: Callable[..., CommandRunner], with_api: Any, services: Services
) -> None:
    await _pro_through(services, "810", user_id=str(MEMBER))
    sent = await as_user(MEMBER).run("/upgrade")
    assert [label for label, _ in sent[-1].buttons()] == ["Manage subscription"]


async def test_a_manager_gets_the_portal_link(
    as_user: Callable[..., CommandRunner], with_api: Any, services: Services
) -> None:
    await _pro_through(services, "811", user_id=str(OWNER))
    sent = await as_user(MANAGER, manage=True).run("/upgrade")
    assert [label for label, _ in sent[-1].buttons()] == ["Manage subscription"]


async def test_packs_have_a_checkout_button_beside_pro(
    owner: CommandRunner, with_api: Any, services: Services
) -> None:
    services.config.lemonsqueezy.packs = {"9": 1_000_000, "10": 5_000_000}
    sent = await owner.run("/upgrade")
    labels = [label for label, _ in sent[-1].buttons()]
    assert labels == ["Upgrade to Pro", "Buy 1,000,000 tokens", "Buy 5,000,000 tokens"]
    variants = [r.body["data"]["relationships"]["variant"]["data"]["id"] for r in with_api.requests]
    assert variants == ["34", "9", "10"]
    for request in with_api.requests:  # every checkout carries the account
        custom = request.body["data"]["attributes"]["checkout_data"]["custom"]
        assert custom["account_id"] == f"guild:{GUILD}"


async def test_packs_without_api_key_use_their_share_links(
    owner: CommandRunner, services: Services
) -> None:
    ls = services.config.lemonsqueezy
    ls.packs = {"9": 1_000_000}
    ls.pack_checkout_urls = {"9": "https://shop.example/checkout/buy/pack"}
    sent = await owner.run("/upgrade")
    _, (label, pack) = sent[-1].buttons()
    assert label == "Buy 1,000,000 tokens" and (pack or "").startswith(
        "https://shop.example/checkout/buy/pack?"
    )
    assert parse_qs(urlsplit(pack or "").query)["checkout[custom][account_id]"] == [
        f"guild:{GUILD}"
    ]


async def test_tokens_shows_manage_subscription_to_managers_only(
    as_user: Callable[..., CommandRunner], with_api: Any, services: Services
) -> None:
    await _pro_through(services, "812", user_id=str(OWNER))
    sent = await as_user(OWNER).run("/tokens")
    assert sent[-1].buttons() == [
        ("Manage subscription", "https://shop.example/billing?sub=812&expires=fresh")
    ]
    sent = await as_user(MEMBER).run("/tokens")
    assert not sent[-1].buttons() and "Pro plan" in text(sent)


async def test_past_due_shows_update_payment_method(
    owner: CommandRunner, with_api: Any, services: Services
) -> None:
    await _pro_through(services, "813", user_id=str(OWNER), status="past_due")
    sent = await owner.run("/upgrade")
    assert sent[-1].buttons()[0] == (
        "Update payment method",
        "https://shop.example/billing/813/update-payment-method?expires=fresh",
    )


async def test_without_api_key_manage_opens_the_store_billing_page(
    owner: CommandRunner, services: Services
) -> None:
    await _pro_through(services, "814", user_id=str(OWNER))
    sent = await owner.run("/upgrade")
    assert sent[-1].buttons() == [("Manage subscription", "https://shop.example/billing")]


async def test_with_several_subscriptions_the_one_that_grants_and_ends_last(
    owner: CommandRunner, with_api: Any, services: Services
) -> None:
    from tests.billing.payloads import ANNUAL

    await _pro_through(services, "815", user_id=str(OWNER))  # monthly, renews 2026-12-24
    await _pro_through(
        services, "816", user_id=str(OWNER), variant_id=ANNUAL, renews_at="2027-11-24T10:00:00Z"
    )
    await _pro_through(  # the monthly one cancelled: it ends first
        services,
        "815",
        user_id=str(OWNER),
        event="subscription_cancelled",
        status="cancelled",
        ends_at="2026-12-24T10:00:00.000000Z",
        updated_at="2026-11-25T10:00:00.000000Z",
    )
    sent = await owner.run("/upgrade")
    assert "renews <t:1827050400:D>" in text(sent)  # 2027-11-24T10:00Z
    assert with_api.requests[-1].path == "/v1/subscriptions/816"
