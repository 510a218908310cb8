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
    from bot.http.sidecar import parse_event
    from ledger.subscriptions import apply_event
    from tests.billing.payloads import encode, subscription

    await apply_event(
        services.ledger,
        parse_event(encode(subscription("subscription_created", sub_id="808"))),
        accept_test_mode=False,
    )
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


async def _pro_through(services: Services, sub_id: str, user_id: str) -> None:
    from bot.http.sidecar import parse_event
    from ledger.subscriptions import apply_event
    from tests.billing.payloads import encode, subscription

    body = encode(subscription("subscription_created", sub_id=sub_id, user_id=user_id))
    await apply_event(services.ledger, parse_event(body), accept_test_mode=False)


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
