"""`python -m bot billing replay|link|events` and `check`'s warning, through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.config import load
from bot.runtime import open_ledger
from tests.billing.conftest import deliver
from tests.billing.payloads import ANNUAL, MONTHLY, STORE_ID, subscription

ACCOUNT = "guild:1000"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder without config.toml or .env; only the monthly variant is Pro."""
    for name in list(os.environ):
        if name.upper().startswith("BOT_") or name.upper().startswith("LEMONSQUEEZY"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bot.db"
    monkeypatch.setenv("BOT_STORAGE__DATABASE", str(path))
    monkeypatch.setenv("BOT_LEMONSQUEEZY__STORE_ID", STORE_ID)
    monkeypatch.setenv("BOT_LEMONSQUEEZY__PRO_VARIANT_IDS", json.dumps([MONTHLY]))
    asyncio.run(_apply([]))
    return path


async def _apply(payloads: list[dict[str, Any]]) -> list[str]:
    config = load()
    async with await open_ledger(config, "test") as ledger:
        return [(await deliver(ledger, config, p)).outcome for p in payloads]


async def _state(account: str) -> tuple[str, bool, list[str]]:
    async with await open_ledger(load(), "test") as ledger:
        balance = await ledger.balance(account)
        history = [e.operation_type for e in await ledger.history(account)]
        return balance.plan_type, await ledger.verify() == [], history


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _event_ids(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()[1:]]


def test_replay_applies_an_event_ignored_before_its_variant_was_configured(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    annual = subscription("subscription_created", variant_id=ANNUAL)
    assert asyncio.run(_apply([annual])) == ["ignored"]
    code, out, _ = run(capsys, "billing", "events")
    assert code == 0 and "subscription_created" in out and "ignored not a Pro variant" in out
    [event_id] = _event_ids(out)

    monkeypatch.setenv("BOT_LEMONSQUEEZY__PRO_VARIANT_IDS", json.dumps([MONTHLY, ANNUAL]))
    code, out, _ = run(capsys, "billing", "replay", str(event_id))
    assert code == 0 and f"event {event_id} (subscription_created): applied {ACCOUNT}" in out
    plan, clean, history = asyncio.run(_state(ACCOUNT))
    assert plan == "pro" and clean and "plan_change" in history

    code, out, _ = run(capsys, "billing", "replay", str(event_id))  # applied: nothing again
    assert code == 0 and "was applied already: nothing done" in out
    assert asyncio.run(_state(ACCOUNT)) == (plan, clean, history)


def test_replay_of_an_invalid_event_and_of_no_event(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = subscription("subscription_updated")
    del broken["data"]["attributes"]["status"]
    assert asyncio.run(_apply([broken])) == ["invalid"]
    code, out, _ = run(capsys, "billing", "events", "--account", ACCOUNT)
    [event_id] = _event_ids(out)
    code, out, _ = run(capsys, "billing", "replay", str(event_id))
    assert code == 0 and "invalid" in out and "no status or updated_at" in out
    code, out, err = run(capsys, "billing", "replay", "999")
    assert code == 2 and err.strip() == "no webhook event 999 (see `billing events`)"


def test_link_attaches_a_subscription_bought_without_custom_data(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = subscription("subscription_created", sub_id="321", account_id=None, user_id=None)
    assert asyncio.run(_apply([plain])) == ["unlinked"]
    code, out, _ = run(capsys, "billing", "link", "321", "guild:77")
    assert code == 0 and out.strip() == "subscription 321 linked to guild:77: free -> pro"
    plan, clean, history = asyncio.run(_state("guild:77"))
    assert plan == "pro" and clean and history[:2] == ["period_reset", "plan_change"]
    async_history = asyncio.run(_cli_history("guild:77"))
    assert "cli:" in async_history and "linked by an operator" in async_history

    code, _, err = run(capsys, "billing", "link", "321", "guild:78")
    assert code == 2 and "linked to guild:77 already" in err
    code, _, err = run(capsys, "billing", "link", "404", "guild:78")
    assert code == 2 and "no subscription 404 was received" in err
    code, _, err = run(capsys, "billing", "link", "321", "channel:1")
    assert code == 2
    # Later events of the subscription carry no custom data either: they follow the link.
    expired = subscription(
        "subscription_expired",
        sub_id="321",
        status="expired",
        account_id=None,
        user_id=None,
        updated_at="2026-11-25T00:00:00.000000Z",
    )
    assert asyncio.run(_apply([expired])) == ["applied"]
    assert asyncio.run(_state("guild:77"))[0] == "free"


async def _cli_history(account: str) -> str:
    async with await open_ledger(load(), "test") as ledger:
        return "\n".join(f"{e.user_id} {e.details}" for e in await ledger.history(account))


def test_events_lists_what_was_received_by_account(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(
        _apply(
            [
                subscription("subscription_created"),
                subscription("subscription_created", sub_id="2", account_id="guild:2"),
            ]
        )
    )
    code, out, _ = run(capsys, "billing", "events")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = run(capsys, "billing", "events", "--account", "guild:2")
    header, line = out.splitlines()
    assert header.split()[:3] == ["id", "received", "event"]
    assert "guild:2" in line and "applied" in line


def test_check_warns_when_no_pro_variant_is_configured(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = run(capsys, "check")
    assert "no Pro variant is configured" not in out
    monkeypatch.delenv("BOT_LEMONSQUEEZY__PRO_VARIANT_IDS")
    _, out, _ = run(capsys, "check")
    assert "warning: no Pro variant is configured" in out
