"""Billing as LemonSqueezy really behaves (issue 11): the plan from all of an account's
subscriptions, only Pro variants, monthly tokens for annual subscriptions, refunds and
token packs. Events are applied as the sidecar applies them (tests/billing/conftest.py
`deliver`), on a real ledger with a manual clock; `verify()` is clean after each one."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from ledger import Ledger, ManualClock
from ledger.periods import add_months
from tests.billing.conftest import deliver, make_config, open_billing_ledger
from tests.billing.payloads import (
    ANNUAL,
    PACK_TOKENS,
    PACK_VARIANT,
    USAGE_VARIANT,
    encode,
    invoice,
    order,
    subscription,
)

ACCOUNT = "guild:1000"
SWITCH = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


async def _history(ledger: Ledger, account: str = ACCOUNT) -> list[tuple[str, str]]:
    return [(e.operation_type, e.details or "") for e in await ledger.history(account, 500)]


# ---- 1. the plan comes from all of an account's subscriptions ----------------------------


def _switch_events(prefix: int) -> list[dict[str, Any]]:
    """Monthly to annual, as LemonSqueezy does it: a new annual subscription (created,
    paid, updated) and the old monthly one updated, cancelled and later expired."""
    account = f"guild:{5000 + prefix}"
    annual, monthly = str(200_000 + prefix), str(100_000 + prefix)
    common = {"account_id": account}
    return [
        subscription(
            "subscription_created",
            sub_id=annual,
            variant_id=ANNUAL,
            order_id=31,
            created_at="2026-11-24T11:00:00.000000Z",
            updated_at="2026-11-24T11:00:00.000000Z",
            renews_at="2027-11-24T11:00:00.000000Z",
            **common,
        ),
        invoice(
            "subscription_payment_success",
            invoice_id=str(600_000 + prefix),
            sub_id=annual,
            total=30_000,
            created_at="2026-11-24T11:00:00.000000Z",
            **common,
        ),
        subscription(
            "subscription_updated",
            sub_id=annual,
            variant_id=ANNUAL,
            order_id=31,
            created_at="2026-11-24T11:00:00.000000Z",
            updated_at="2026-11-24T11:00:05.000000Z",
            renews_at="2027-11-24T11:00:00.000000Z",
            **common,
        ),
        subscription(
            "subscription_updated",
            sub_id=monthly,
            created_at="2026-10-24T10:00:00.000000Z",
            updated_at="2026-11-24T11:00:01.000000Z",
            renews_at="2026-12-24T10:00:00.000000Z",
            **common,
        ),
        subscription(
            "subscription_cancelled",
            sub_id=monthly,
            status="cancelled",
            created_at="2026-10-24T10:00:00.000000Z",
            updated_at="2026-11-24T11:00:02.000000Z",
            renews_at="2026-12-24T10:00:00.000000Z",
            ends_at="2026-12-24T10:00:00.000000Z",
            **common,
        ),
        subscription(
            "subscription_expired",
            sub_id=monthly,
            status="expired",
            created_at="2026-10-24T10:00:00.000000Z",
            updated_at="2026-11-24T11:30:00.000000Z",
            renews_at="2026-12-24T10:00:00.000000Z",
            ends_at="2026-11-24T11:30:00.000000Z",
            **common,
        ),
    ]


async def _seed_monthly(ledger: Ledger, config: Config, prefix: int) -> None:
    """The old monthly subscription, Pro since October, with some usage this cycle."""
    account = f"guild:{5000 + prefix}"
    created = subscription(
        "subscription_created",
        sub_id=str(100_000 + prefix),
        created_at="2026-10-24T10:00:00.000000Z",
        updated_at="2026-10-24T10:00:00.000000Z",
        renews_at="2026-12-24T10:00:00.000000Z",
        account_id=account,
    )
    assert (await deliver(ledger, config, created)).outcome == "applied"
    hold = await ledger.reserve(account, 4_321, "chat")
    await ledger.commit(hold, 4_321)


async def _final_state(ledger: Ledger, prefix: int) -> tuple[Any, ...]:
    reader = ledger.store.reader
    account = f"guild:{5000 + prefix}"
    (usage,) = await reader.execute_fetchall(
        "SELECT plan_type, tokens_limit, tokens_used, period_start, period_end, period_anchor,"
        " period_seq FROM usage_limits WHERE account_id = ?",
        (account,),
    )
    subs = await reader.execute_fetchall(
        "SELECT CAST(subscription_id AS INTEGER) / 100000, status, access, renews_at, ends_at,"
        " variant_id, updated_at, last_invoice_id IS NOT NULL FROM subscriptions"
        " WHERE account_id = ? ORDER BY subscription_id",
        (account,),
    )
    return tuple(usage), [tuple(r) for r in subs]


async def _run_orders(
    ledger: Ledger, config: Config, orders: list[list[dict[str, Any]]]
) -> list[tuple[Any, ...]]:
    """Each delivery order on an account of its own, all at once (the single writer
    commits them in groups, which keeps 720 orders fast)."""

    async def one(prefix: int, events: list[dict[str, Any]]) -> None:
        await _seed_monthly(ledger, config, prefix)
        for payload in events:
            outcome = await deliver(ledger, config, payload)
            assert outcome.outcome in {"applied", "stale", "duplicate", "recorded"}, outcome

    await asyncio.gather(*(one(prefix, events) for prefix, events in enumerate(orders)))
    return [await _final_state(ledger, prefix) for prefix in range(len(orders))]


def _permutations(replays: bool) -> list[list[dict[str, Any]]]:
    rng = random.Random(11)
    orders = []
    for prefix, order_ in enumerate(itertools.permutations(range(6))):
        events = _switch_events(prefix)
        sequence = [events[i] for i in order_]
        if replays:  # each event delivered again (byte for byte) somewhere after itself
            for event in list(sequence):
                at = rng.randrange(sequence.index(event) + 1, len(sequence) + 1)
                sequence.insert(at, event)
        orders.append(sequence)
    return orders


@pytest.mark.parametrize("replays", [False, True], ids=["once", "with_replays"])
async def test_every_delivery_order_of_a_monthly_to_annual_switch_ends_the_same(
    tmp_path: Path, billing_clock: ManualClock, replays: bool
) -> None:
    config = make_config(tmp_path)
    billing_clock.set(SWITCH)
    ledger = await open_billing_ledger(tmp_path / "bot.db", billing_clock)
    try:
        orders = _permutations(replays)
        assert len(orders) == 720
        states = await _run_orders(ledger, config, orders)
        assert await ledger.verify() == []
    finally:
        await ledger.close()
    (plan, limit, used, start, end, anchor, _seq), subs = states[0]
    # Pro on the annual subscription's monthly grid, usage back to 0 for its first month.
    assert (plan, limit, used) == ("pro", 10_000_000, 0)
    assert (start, end, anchor) == (
        "2026-11-24T11:00:00.000000Z",
        "2026-12-24T11:00:00.000000Z",
        "2027-11-24T11:00:00.000000Z",
    )
    assert [(s[0], s[1], s[2]) for s in subs] == [(1, "expired", "none"), (2, "active", "granted")]
    differing = [i for i, state in enumerate(states) if state != states[0]]
    assert differing == [], f"{len(differing)} orders differ, e.g. {orders[differing[0]]}"


async def test_an_ended_subscription_does_not_demote_while_another_grants(
    billing_ledger: Ledger, config: Config
) -> None:
    await deliver(billing_ledger, config, subscription("subscription_created", sub_id="1"))
    await deliver(
        billing_ledger, config, subscription("subscription_created", sub_id="2", variant_id=ANNUAL)
    )
    expired = subscription(
        "subscription_expired",
        sub_id="1",
        status="expired",
        updated_at="2026-11-24T11:00:00.000000Z",
    )
    outcome = await deliver(billing_ledger, config, expired)
    assert (outcome.outcome, outcome.plan_after) == ("applied", "pro")
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    assert await billing_ledger.verify() == []


# ---- 2. only the configured product grants Pro -------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        subscription("subscription_created", sub_id="61", variant_id=USAGE_VARIANT),
        subscription("subscription_created", sub_id="62", variant_id="12345"),
        order("order_created", order_id="63", variant_id=USAGE_VARIANT, total=0),
    ],
    ids=["usage_based_product", "unknown_variant", "order_of_another_product"],
)
async def test_other_variants_are_ignored(
    billing_ledger: Ledger, config: Config, payload: dict[str, Any]
) -> None:
    outcome = await deliver(billing_ledger, config, payload)
    assert outcome.outcome == "ignored" and "not a" in outcome.detail
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    reader = billing_ledger.store.reader
    assert (await reader.execute_fetchall("SELECT COUNT(*) FROM subscriptions"))[0][0] == 0
    assert (await reader.execute_fetchall("SELECT COUNT(*) FROM usage_limits"))[0][0] == 0
    (row,) = await reader.execute_fetchall("SELECT outcome, detail, body FROM webhook_events")
    assert row["outcome"] == "ignored" and bytes(row["body"]) == encode(payload)
    assert await billing_ledger.verify() == []


async def test_another_store_is_ignored(billing_ledger: Ledger, config: Config) -> None:
    payload = subscription("subscription_created")
    payload["data"]["attributes"]["store_id"] = 999
    outcome = await deliver(billing_ledger, config, payload)
    assert (outcome.outcome, outcome.detail) == ("ignored", "another store (999)")
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    assert await billing_ledger.verify() == []


async def test_no_variant_configured_grants_nothing(tmp_path: Path, billing_ledger: Ledger) -> None:
    config = make_config(tmp_path)
    config.lemonsqueezy.pro_variant_ids = []
    outcome = await deliver(billing_ledger, config, subscription("subscription_created"))
    assert outcome.outcome == "ignored"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    assert await billing_ledger.verify() == []


# ---- 3. tokens are monthly, whatever the billing interval --------------------------------


async def test_an_annual_subscription_resets_monthly_twelve_times_in_its_year(
    tmp_path: Path,
) -> None:
    start = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)  # the 31st: months clamp, never drift
    clock = ManualClock(start)
    config = make_config(tmp_path)
    ledger = await open_billing_ledger(tmp_path / "bot.db", clock)
    try:
        created = subscription(
            "subscription_created",
            variant_id=ANNUAL,
            created_at="2026-01-31T10:00:00.000000Z",
            updated_at="2026-01-31T10:00:00.000000Z",
            renews_at="2027-01-31T10:00:00.000000Z",
        )
        assert (await deliver(ledger, config, created)).outcome == "applied"
        periods: list[tuple[datetime, datetime]] = []
        while clock.now() < add_months(start, 12):
            hold = await ledger.reserve(ACCOUNT, 1_000, "chat")  # a write: rolls over lazily
            await ledger.commit(hold, 1_000)
            balance = await ledger.balance(ACCOUNT)
            assert balance.plan_type == "pro" and balance.tokens_limit == 10_000_000
            if not periods or periods[-1] != (balance.period_start, balance.period_end):
                assert balance.tokens_used == 1_000  # a fresh month: only this charge
                periods.append((balance.period_start, balance.period_end))
            assert await ledger.verify() == []
            clock.advance(days=5)
        # Twelve months of 10,000,000 each: the first from the subscription's start.
        assert periods == [(add_months(start, k), add_months(start, k + 1)) for k in range(12)]
        resets = [op for op, _ in await _history(ledger) if op == "period_reset"]
        assert len(resets) == 11
        clock.set(add_months(start, 12))  # the year's end: the 12th monthly reset
        hold = await ledger.reserve(ACCOUNT, 1_000, "chat")
        await ledger.commit(hold, 1_000)
        resets = [op for op, _ in await _history(ledger) if op == "period_reset"]
        assert len(resets) == 12
        assert await ledger.verify() == []
    finally:
        await ledger.close()


async def test_a_monthly_period_follows_its_billing_cycle_in_any_order(
    tmp_path: Path, billing_clock: ManualClock
) -> None:
    config = make_config(tmp_path)
    events = [
        subscription("subscription_created"),
        invoice("subscription_payment_success"),
        subscription("subscription_updated", updated_at="2026-11-24T10:00:01.000000Z"),
    ]
    finals = []
    for number, order_ in enumerate(itertools.permutations(events)):
        ledger = await open_billing_ledger(tmp_path / f"{number}.db", billing_clock)
        try:
            for payload in order_:
                await deliver(ledger, config, payload)
            balance = await ledger.balance(ACCOUNT)
            finals.append((balance.plan_type, balance.period_start, balance.period_end))
            assert await ledger.verify() == []
        finally:
            await ledger.close()
    cycle = (datetime(2026, 11, 24, 10, tzinfo=UTC), datetime(2026, 12, 24, 10, tzinfo=UTC))
    assert finals == [("pro", *cycle)] * 6


# ---- issue 10, finding 5: an invoice never revives an ended subscription -----------------


async def test_a_late_renewal_invoice_does_not_revive_an_expired_subscription(
    billing_ledger: Ledger, config: Config
) -> None:
    await deliver(billing_ledger, config, subscription("subscription_created"))
    expired = subscription(
        "subscription_expired", status="expired", updated_at="2026-11-24T11:00:00.000000Z"
    )
    await deliver(billing_ledger, config, expired)
    late = invoice("subscription_payment_success", invoice_id="999", billing_reason="renewal")
    outcome = await deliver(billing_ledger, config, late)
    assert outcome.outcome == "recorded" and "never revives" in outcome.detail
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    assert await billing_ledger.verify() == []


# ---- 4. refunds are visible, and the operator decides ------------------------------------


async def _paid_monthly(ledger: Ledger, config: Config) -> None:
    await deliver(ledger, config, subscription("subscription_created"))
    await deliver(ledger, config, invoice("subscription_payment_success", invoice_id="501"))


@pytest.mark.parametrize("policy", ["keep", "downgrade"])
async def test_a_full_refund_of_the_current_payment(
    tmp_path: Path, billing_ledger: Ledger, policy: str
) -> None:
    config = make_config(tmp_path, refund_policy=policy)
    await _paid_monthly(billing_ledger, config)
    refund = invoice(
        "subscription_payment_refunded", invoice_id="501", status="refunded", total=3000
    )
    outcome = await deliver(billing_ledger, config, refund)
    assert outcome.outcome == "refund"
    plan = {"keep": "pro", "downgrade": "free"}[policy]
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == plan
    history = await _history(billing_ledger)
    refunds = [d for op, d in history if op == "refund"]
    assert len(refunds) == 1 and "30.00 USD" in refunds[0] and f"policy {policy}" in refunds[0]
    if policy == "downgrade":
        assert history[0][0] == "plan_change" and "pro -> free" in history[0][1]
    # The same refund again, in another body: recorded once.
    refund["meta"]["webhook_id"] = "wh-again"
    assert (await deliver(billing_ledger, config, refund)).outcome == "duplicate"
    assert await billing_ledger.verify() == []


async def test_downgrade_spares_partial_refunds_and_a_later_payment_restores(
    tmp_path: Path, billing_ledger: Ledger
) -> None:
    config = make_config(tmp_path, refund_policy="downgrade")
    await _paid_monthly(billing_ledger, config)
    partial = invoice(
        "subscription_payment_refunded",
        invoice_id="501",
        status="partial_refund",
        refunded_amount=1000,
    )
    assert (await deliver(billing_ledger, config, partial)).outcome == "refund"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    full = invoice("subscription_payment_refunded", invoice_id="501", status="refunded")
    await deliver(billing_ledger, config, full)
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "free"
    renewal = invoice("subscription_payment_success", invoice_id="502", billing_reason="renewal")
    assert (await deliver(billing_ledger, config, renewal)).outcome == "applied"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    assert await billing_ledger.verify() == []


async def test_an_order_refund_of_a_subscription_is_in_the_history(
    billing_ledger: Ledger, config: Config
) -> None:
    await _paid_monthly(billing_ledger, config)
    outcome = await deliver(billing_ledger, config, order("order_refunded", status="refunded"))
    assert outcome.outcome == "refund"
    assert any(op == "refund" and "30.00 USD" in d for op, d in await _history(billing_ledger))
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"  # policy keep
    assert await billing_ledger.verify() == []


# ---- 5. token packs ----------------------------------------------------------------------


async def test_a_pack_is_granted_once_under_20_concurrent_replays(
    billing_ledger: Ledger, config: Config
) -> None:
    bodies = []
    for n in range(20):  # 10 distinct deliveries of the one order, each sent twice
        payload = order(
            "order_created", order_id="71", variant_id=PACK_VARIANT, webhook_id=f"wh-{n // 2}"
        )
        bodies.append(encode(payload))
    outcomes = await asyncio.gather(*(deliver(billing_ledger, config, b) for b in bodies))
    assert sorted(o.outcome for o in outcomes) == ["applied"] + ["duplicate"] * 19
    balance = await billing_ledger.balance(ACCOUNT)
    assert balance.bonus_tokens == PACK_TOKENS
    assert [op for op, _ in await _history(billing_ledger)] == ["pack_grant"]
    assert await billing_ledger.verify() == []


async def test_two_sidecars_on_one_database_apply_each_event_once(
    billing_ledger: Ledger, billing_clock: ManualClock, config: Config, database: str
) -> None:
    """Sidecars behind a load balancer: each has its own ledger (its own connections), and
    a provider's retries reach either one, at the same moment."""
    other = await open_billing_ledger(database, billing_clock)
    try:
        bodies = [
            encode(
                order(
                    "order_created",
                    order_id=str(80 + n % 3),
                    variant_id=PACK_VARIANT,
                    webhook_id=f"wh-{n}",
                )
            )
            for n in range(12)  # 3 orders, each delivered 4 times
        ]
        outcomes = await asyncio.gather(
            *(deliver((billing_ledger, other)[n % 2], config, b) for n, b in enumerate(bodies))
        )
        assert sorted(o.outcome for o in outcomes) == ["applied"] * 3 + ["duplicate"] * 9
        assert (await other.balance(ACCOUNT)).bonus_tokens == 3 * PACK_TOKENS
        assert await other.verify() == []
    finally:
        await other.close()


async def test_a_pack_refund_takes_back_what_is_unspent(
    billing_ledger: Ledger, config: Config
) -> None:
    pack = order("order_created", order_id="72", variant_id=PACK_VARIANT, total=500)
    await deliver(billing_ledger, config, pack)
    spent = 250_000 + 300_000  # the month's allowance, then 300,000 of the pack
    hold = await billing_ledger.reserve(ACCOUNT, spent, "chat")
    await billing_ledger.commit(hold, spent)
    refund = order(
        "order_refunded", order_id="72", variant_id=PACK_VARIANT, total=500, status="refunded"
    )
    outcome = await deliver(billing_ledger, config, refund)
    assert outcome.outcome == "refund"
    assert "took back 700000 of 1000000 pack tokens (300000 already spent)" in outcome.detail
    balance = await billing_ledger.balance(ACCOUNT)
    assert balance.bonus_tokens == 0 and balance.available == 0
    refund["meta"]["webhook_id"] = "wh-again"
    assert (await deliver(billing_ledger, config, refund)).outcome == "duplicate"
    history = [op for op, _ in await _history(billing_ledger)]
    assert history[:2] == ["refund", "pack_revoke"] and "pack_grant" in history
    assert await billing_ledger.verify() == []


async def test_a_partial_pack_refund_takes_back_its_share(
    billing_ledger: Ledger, config: Config
) -> None:
    await deliver(
        billing_ledger, config, order("order_created", order_id="73", variant_id=PACK_VARIANT)
    )
    half = order(
        "order_refunded",
        order_id="73",
        variant_id=PACK_VARIANT,
        status="partial_refund",
        refunded_amount=1500,
    )
    await deliver(billing_ledger, config, half)
    assert (await billing_ledger.balance(ACCOUNT)).bonus_tokens == PACK_TOKENS // 2
    assert await billing_ledger.verify() == []


async def test_an_unpaid_pack_order_grants_nothing(billing_ledger: Ledger, config: Config) -> None:
    pending = order("order_created", order_id="74", variant_id=PACK_VARIANT, status="pending")
    assert (await deliver(billing_ledger, config, pending)).outcome == "recorded"
    assert (await billing_ledger.balance(ACCOUNT)).bonus_tokens == 0
    assert await billing_ledger.verify() == []


# ---- 7. one audit trail ------------------------------------------------------------------


async def test_history_shows_every_kind_of_row(
    billing_ledger: Ledger, config: Config, billing_clock: ManualClock
) -> None:
    await billing_ledger.grant(ACCOUNT, 5_000, "cli:ops", "goodwill")
    await _paid_monthly(billing_ledger, config)
    hold = await billing_ledger.reserve(ACCOUNT, 1_234, "chat", user_id=42)
    await billing_ledger.commit(hold, 1_234)
    await deliver(
        billing_ledger, config, order("order_created", order_id="81", variant_id=PACK_VARIANT)
    )
    await deliver(
        billing_ledger,
        config,
        order("order_refunded", order_id="81", variant_id=PACK_VARIANT, status="refunded"),
    )
    await deliver(
        billing_ledger, config, invoice("subscription_payment_refunded", status="refunded")
    )
    billing_clock.advance(days=31)  # past the cycle: the next write starts a fresh period
    await billing_ledger.revoke(ACCOUNT, 1, "cli:ops", "typo")
    entries = await billing_ledger.history(ACCOUNT, 100)
    kinds = {e.operation_type for e in entries}
    assert kinds == {
        "grant",
        "plan_change",
        "period_reset",
        "chat",
        "pack_grant",
        "pack_revoke",
        "refund",
        "revoke",
    }
    actors = {e.operation_type: e.user_id for e in entries}
    assert actors["grant"] == "cli:ops" and actors["chat"] == "42"
    assert actors["plan_change"] == "billing" and actors["refund"] == "lemonsqueezy"
    assert all(e.details for e in entries if e.operation_type != "chat")  # each has a reason
    assert await billing_ledger.verify() == []


# ---- 8. nothing received is lost -----------------------------------------------------------


async def test_an_event_missing_a_field_is_kept_as_invalid(
    billing_ledger: Ledger, config: Config
) -> None:
    payload = subscription("subscription_updated")
    del payload["data"]["attributes"]["updated_at"]
    outcome = await deliver(billing_ledger, config, payload)
    assert (outcome.outcome, outcome.detail) == ("invalid", "no status or updated_at")
    (row,) = await billing_ledger.store.reader.execute_fetchall(
        "SELECT outcome, detail, body FROM webhook_events"
    )
    assert (row["outcome"], bytes(row["body"])) == ("invalid", encode(payload))
    assert await billing_ledger.verify() == []


async def test_a_test_mode_event_applies_when_resent_in_test_mode(
    tmp_path: Path, billing_ledger: Ledger
) -> None:
    body = encode(subscription("subscription_created", test_mode=True))
    off = make_config(tmp_path, test_mode=False)
    assert (await deliver(billing_ledger, off, body)).outcome == "test_mode_ignored"
    assert (await deliver(billing_ledger, off, body)).outcome == "duplicate"
    on = make_config(tmp_path, test_mode=True)
    assert (await deliver(billing_ledger, on, body)).outcome == "applied"
    assert (await billing_ledger.balance(ACCOUNT)).plan_type == "pro"
    assert (await deliver(billing_ledger, on, body)).outcome == "duplicate"
    rows = await billing_ledger.store.reader.execute_fetchall("SELECT outcome FROM webhook_events")
    assert [r[0] for r in rows] == ["applied"]
    assert await billing_ledger.verify() == []


def test_the_annual_year_is_twelve_months() -> None:
    assert add_months(SWITCH, 12) - SWITCH == timedelta(days=365)
