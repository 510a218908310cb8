"""The LemonSqueezy webhook: verification, lifecycle, replays and out-of-order delivery."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger, ManualClock
from tests.billing.conftest import Sidecar, make_config, open_sidecar
from tests.billing.payloads import encode, every_event, invoice, order, sign, subscription

ACCOUNT = "guild:1000"


async def _state(ledger: Ledger) -> tuple[Any, ...]:
    """Everything an event may change: balances, subscriptions, journal, applied events."""
    reader = ledger.store.reader
    tables = []
    for sql in (
        "SELECT account_id, plan_type, tokens_limit, tokens_used, period_end FROM usage_limits",
        "SELECT subscription_id, account_id, status, access, updated_at FROM subscriptions",
        "SELECT account_id, action, new_value FROM journal",
        "SELECT account_id, operation_type, bonus_delta, details FROM token_usage",
        "SELECT body_sha256, outcome FROM webhook_events WHERE outcome NOT IN ('duplicate')",
    ):
        tables.append([tuple(r) for r in await reader.execute_fetchall(sql)])
    return tuple(tables)


async def test_created_makes_the_account_pro(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    status, data = await sidecar.post(subscription("subscription_created"))
    assert status == 200 and data["outcome"] == "applied"
    balance = await billing_ledger.balance(ACCOUNT)
    assert balance.plan_type == "pro" and balance.tokens_limit == 10_000_000
    assert sidecar.notices == [(ACCOUNT, "1", "pro")]


async def test_lifecycle(
    sidecar: Sidecar, billing_ledger: Ledger, billing_clock: ManualClock
) -> None:
    await sidecar.post(subscription("subscription_created"))
    await sidecar.post(invoice("subscription_payment_success", billing_reason="initial"))
    balance = await billing_ledger.balance(ACCOUNT)
    assert balance.plan_type == "pro" and balance.period_end.isoformat().startswith("2026-12-24")

    hold = await billing_ledger.reserve(ACCOUNT, 70_000, "chat")
    await billing_ledger.commit(hold, 70_000)
    cancelled = subscription(
        "subscription_cancelled",
        status="cancelled",
        ends_at="2026-12-24T10:00:00.000000Z",
        updated_at="2026-11-25T10:00:00.000000Z",
    )
    await sidecar.post(cancelled)
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"  # paid until ends_at

    await sidecar.post(
        subscription(
            "subscription_expired", status="expired", updated_at="2026-12-24T10:00:01.000000Z"
        )
    )
    balance = await billing_ledger.balance(ACCOUNT)
    assert balance.plan_type == "free" and balance.tokens_limit == 250_000
    assert sidecar.notices[-1] == (ACCOUNT, "1", "free")
    assert await billing_ledger.verify() == []


async def test_renewal_resets_usage_once(
    sidecar: Sidecar, billing_ledger: Ledger, billing_clock: ManualClock
) -> None:
    await sidecar.post(subscription("subscription_created"))
    hold = await billing_ledger.reserve(ACCOUNT, 123_456, "chat")
    await billing_ledger.commit(hold, 123_456)
    billing_clock.set(datetime(2026, 12, 24, 10, 5, tzinfo=UTC))  # the cycle has renewed
    renewal = invoice(
        "subscription_payment_success",
        invoice_id="777",
        billing_reason="renewal",
        created_at="2026-12-24T10:00:00.000000Z",
    )
    assert (await sidecar.post(renewal))[1]["outcome"] == "applied"
    renewed = subscription(
        "subscription_updated",
        updated_at="2026-12-24T10:00:01.000000Z",
        renews_at="2027-01-24T10:00:00.000000Z",
    )
    assert (await sidecar.post(renewed))[1]["outcome"] == "applied"
    balance = await billing_ledger.balance(ACCOUNT)
    assert balance.tokens_used == 0 and balance.period_end.isoformat().startswith("2027-01-24")
    hold = await billing_ledger.reserve(ACCOUNT, 1_000, "chat")
    await billing_ledger.commit(hold, 1_000)
    status, data = await sidecar.post(renewal)  # exact replay
    assert status == 200 and data["outcome"] == "duplicate"
    renewal["meta"]["webhook_id"] = "wh-resent"  # same invoice, another body
    assert (await sidecar.post(renewal))[1]["outcome"] == "duplicate"
    assert (await billing_ledger.balance(ACCOUNT)).tokens_used == 1_000
    resets = await billing_ledger.store.reader.execute_fetchall(
        "SELECT COUNT(*) FROM token_usage WHERE account_id = ? AND operation_type = 'period_reset'",
        (ACCOUNT,),
    )
    assert resets[0][0] == 2  # the subscription's first period, then the renewal's
    assert await billing_ledger.verify() == []


@pytest.mark.parametrize("payload", every_event(), ids=lambda p: p["meta"]["event_name"])
async def test_every_event_is_accepted_and_replay_changes_nothing(
    sidecar: Sidecar, billing_ledger: Ledger, payload: dict[str, Any]
) -> None:
    await sidecar.post(
        subscription("subscription_created", updated_at="2026-11-20T00:00:00.000000Z")
    )
    status, first = await sidecar.post(payload)
    assert status == 200 and first["outcome"] != "duplicate"
    before = await _state(billing_ledger)
    status, again = await sidecar.post(payload)
    assert status == 200 and again["outcome"] == "duplicate"
    assert await _state(billing_ledger) == before
    assert await billing_ledger.verify() == []


async def test_the_whole_lifecycle_replayed(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    for payload in every_event():
        assert (await sidecar.post(payload))[0] == 200
    before = await _state(billing_ledger)
    for payload in every_event():
        assert (await sidecar.post(payload))[1]["outcome"] == "duplicate"
    assert await _state(billing_ledger) == before
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"  # it ended expired


async def test_updated_before_created(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    newer = subscription(
        "subscription_updated", status="past_due", updated_at="2026-11-24T11:00:00.000000Z"
    )
    older = subscription("subscription_created", updated_at="2026-11-24T10:00:00.000000Z")
    assert (await sidecar.post(newer))[1]["outcome"] == "applied"
    assert (await sidecar.post(older))[1]["outcome"] == "stale"
    rows = await billing_ledger.store.reader.execute_fetchall("SELECT status FROM subscriptions")
    assert rows[0][0] == "past_due"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"


async def test_older_snapshot_after_newer_is_ignored(
    sidecar: Sidecar, billing_ledger: Ledger
) -> None:
    await sidecar.post(
        subscription("subscription_created", updated_at="2026-11-24T10:00:00.000000Z")
    )
    await sidecar.post(
        subscription(
            "subscription_expired", status="expired", updated_at="2026-11-24T12:00:00.000000Z"
        )
    )
    status, data = await sidecar.post(
        subscription(
            "subscription_updated", status="active", updated_at="2026-11-24T11:00:00.000000Z"
        )
    )
    assert status == 200 and data["outcome"] == "stale"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"


async def test_events_without_custom_data_map_through_the_subscription(
    sidecar: Sidecar, billing_ledger: Ledger
) -> None:
    await sidecar.post(subscription("subscription_created"))
    expired = subscription(
        "subscription_expired",
        status="expired",
        updated_at="2026-11-30T00:00:00.000000Z",
        account_id=None,
        user_id=None,
    )
    assert (await sidecar.post(expired))[1]["outcome"] == "applied"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"


async def test_event_with_no_account_is_recorded(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    status, data = await sidecar.post(
        subscription("subscription_created", account_id=None, sub_id="9")
    )
    assert status == 200 and data["outcome"] == "unlinked"
    rows = await billing_ledger.store.reader.execute_fetchall("SELECT COUNT(*) FROM usage_limits")
    assert rows[0][0] == 0


async def test_paused_modes(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    await sidecar.post(subscription("subscription_created"))
    void = subscription(
        "subscription_paused",
        status="paused",
        pause={"mode": "void", "resumes_at": None},
        updated_at="2026-11-25T00:00:00.000000Z",
    )
    await sidecar.post(void)
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    free = subscription(
        "subscription_paused",
        status="paused",
        pause={"mode": "free", "resumes_at": None},
        updated_at="2026-11-26T00:00:00.000000Z",
    )
    await sidecar.post(free)
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"


async def test_test_mode_events_only_in_test_mode(tmp_path: Path, billing_ledger: Ledger) -> None:
    client, _ = await open_sidecar(make_config(tmp_path, test_mode=False), billing_ledger)
    try:
        body = encode(subscription("subscription_created", test_mode=True))
        response = await client.post(
            "/webhooks/lemonsqueezy", data=body, headers={"X-Signature": sign(body)}
        )
        assert response.status == 200 and (await response.json())["outcome"] == "test_mode_ignored"
        assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    finally:
        await client.close()
    client, _ = await open_sidecar(make_config(tmp_path, test_mode=True), billing_ledger)
    try:
        body = encode(subscription("subscription_created", test_mode=True, sub_id="55"))
        response = await client.post(
            "/webhooks/lemonsqueezy", data=body, headers={"X-Signature": sign(body)}
        )
        assert (await response.json())["outcome"] == "applied"
        assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("body", "signature", "status"),
    [
        (encode(subscription("subscription_created")), "", 401),  # unsigned
        (encode(subscription("subscription_created")), "0" * 64, 401),  # wrongly signed
        (encode(subscription("subscription_created")), sign(b"other body"), 401),  # forged
        (encode(subscription("subscription_created")), sign(b"x", "other-secret"), 401),
        (b"{not json", None, 400),  # malformed, but signed
        (b"", None, 400),  # empty
        (b"[1, 2]", None, 400),
        (json.dumps({"meta": {"event_name": 5}, "data": {}}).encode(), None, 400),
        (b"[" * 100_000 + b"]" * 100_000, None, 400),  # RecursionError in json: was a 500
        (b"[" + b"9" * 5_000 + b"]", None, 400),  # over int's 4,300 digits: was a 500
        (b"{" + b" " * (1024 * 1024 + 10) + b"}", None, 413),  # oversized
    ],
)
async def test_bad_bodies_change_nothing(
    sidecar: Sidecar, billing_ledger: Ledger, body: bytes, signature: str | None, status: int
) -> None:
    before = await _state(billing_ledger)
    got, _ = await sidecar.post(body, signature=signature)
    assert got == status
    assert await _state(billing_ledger) == before
    rows = await billing_ledger.store.reader.execute_fetchall("SELECT COUNT(*) FROM webhook_events")
    assert rows[0][0] == 0


async def test_no_secret_refuses_everything(tmp_path: Path, billing_ledger: Ledger) -> None:
    client, _ = await open_sidecar(make_config(tmp_path, secret=None), billing_ledger)
    try:
        body = encode(subscription("subscription_created"))
        response = await client.post(
            "/webhooks/lemonsqueezy", data=body, headers={"X-Signature": sign(body)}
        )
        assert response.status == 503
        assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    finally:
        await client.close()


async def test_a_failing_notifier_never_fails_the_webhook(
    tmp_path: Path, billing_ledger: Ledger
) -> None:
    client, notices = await open_sidecar(make_config(tmp_path), billing_ledger, fail_notify=True)
    assert notices == []
    try:
        body = encode(subscription("subscription_created"))
        response = await client.post(
            "/webhooks/lemonsqueezy", data=body, headers={"X-Signature": sign(body)}
        )
        assert response.status == 200
        assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    finally:
        await client.close()
    assert notices == [(ACCOUNT, "1", "pro")]  # it was tried, and failed harmlessly


async def test_unknown_event_is_recorded_with_200(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    status, data = await sidecar.post(order("license_key_created", order_id="3"))
    assert status == 200 and data["outcome"] == "unknown"
    rows = await billing_ledger.store.reader.execute_fetchall(
        "SELECT event_name, outcome FROM webhook_events"
    )
    assert [tuple(r) for r in rows] == [("license_key_created", "unknown")]


async def test_wrongly_typed_fields_are_not_a_500(sidecar: Sidecar, billing_ledger: Ledger) -> None:
    payload = subscription("subscription_updated")
    payload["data"]["attributes"]["updated_at"] = 12345
    payload["data"]["attributes"]["urls"] = "nope"
    status, _ = await sidecar.post(payload)
    assert status in (200, 400)
    payload = invoice("subscription_payment_success")
    payload["data"]["attributes"]["subscription_id"] = {"x": 1}
    status, _ = await sidecar.post(payload)
    assert status in (200, 400)
    assert await billing_ledger.verify() == []


async def test_a_date_with_no_utc_form_is_not_a_500(
    sidecar: Sidecar, billing_ledger: Ledger
) -> None:
    """9999-12-31T23:59:59-12:00 is valid ISO but past datetime's range once in UTC: the
    renewal that started a period to it raised OverflowError, a 500 at every retry."""
    edge = "9999-12-31T23:59:59-12:00"
    await sidecar.post(subscription("subscription_created", renews_at=edge))
    status, data = await sidecar.post(
        invoice("subscription_payment_success", billing_reason="renewal")
    )
    assert status == 200 and data["outcome"] == "applied"
    balance = await billing_ledger.balance(ACCOUNT)  # unreadable renews_at: a month from now
    assert balance.plan_type == "pro" and balance.period_end.isoformat().startswith("2026-12-24")
    expired = subscription("subscription_expired", status="expired", updated_at=edge)
    status, data = await sidecar.post(expired)  # an unreadable updated_at orders nothing
    assert status == 200 and data["outcome"] == "invalid"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    assert await billing_ledger.verify() == []


async def test_healthz(sidecar: Sidecar) -> None:
    response = await sidecar.client.get("/healthz")
    assert response.status == 200
    data = await response.json()
    assert data["ok"] is True and data["database"] is True and data["version"]


def test_body_hash_is_of_the_raw_bytes() -> None:
    from bot.billing.lemonsqueezy.webhook import parse_event

    body = encode(subscription("subscription_created"))
    assert parse_event(body).body_sha256 == hashlib.sha256(body).hexdigest()


async def test_an_unappliable_event_is_kept_and_logged_at_warning(
    sidecar: Sidecar, billing_ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    payload = subscription("subscription_updated")
    del payload["data"]["attributes"]["updated_at"]
    with caplog.at_level("WARNING"):
        status, data = await sidecar.post(payload)
    assert (status, data["outcome"]) == (200, "invalid")
    assert any("kept as invalid" in r.message and r.levelname == "WARNING" for r in caplog.records)
    (row,) = await billing_ledger.store.reader.execute_fetchall(
        "SELECT outcome, detail, body FROM webhook_events"
    )
    assert (row["outcome"], row["detail"]) == ("invalid", "no status or updated_at")
    assert bytes(row["body"]) == encode(payload)


async def test_a_failure_of_ours_keeps_the_body_for_a_replay(
    sidecar: Sidecar, billing_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.billing import apply

    async def broken(*args: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(apply, "_snapshot", broken)
    payload = subscription("subscription_created")
    status, data = await sidecar.post(payload)
    assert (status, data["outcome"]) == (200, "invalid")
    (row,) = await billing_ledger.store.reader.execute_fetchall(
        "SELECT outcome, detail, body FROM webhook_events"
    )
    assert row["detail"] == "could not be applied: KeyError" and bytes(row["body"]) == encode(
        payload
    )
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
