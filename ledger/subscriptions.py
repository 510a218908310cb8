"""Billing events applied to the ledger: LemonSqueezy subscriptions and invoices.

Promises:
- an event's changes and its record in `webhook_events` commit in one transaction;
- an exact replay (same body) changes nothing, and an invoice or order is applied once
  whatever its body;
- subscription events are full snapshots: the newest `updated_at` wins, an older one is
  recorded and ignored, so delivery in any order converges to the newest snapshot;
- the plan follows the subscription's status; a paid initial or renewal invoice starts
  a fresh Pro period (usage back to 0) ending at the subscription's `renews_at`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from ledger.accounts import check_account_id
from ledger.clock import to_text
from ledger.errors import InvalidAccount
from ledger.periods import add_months

if TYPE_CHECKING:
    from ledger.ledger import Ledger

log = logging.getLogger(__name__)

ACTOR = "lemonsqueezy"
PRO_STATUSES = {"active", "on_trial", "past_due"}
FREE_STATUSES = {"expired", "unpaid"}
FRESH_PERIOD_REASONS = {"initial", "renewal"}
REFUNDS = {"subscription_payment_refunded", "order_refunded"}
RECORDED_ONLY = {"subscription_payment_failed", "order_created", "subscription_payment_recovered"}


@dataclass(frozen=True)
class BillingEvent:
    """A verified webhook, reduced to plain values (parsing is the sidecar's job)."""

    name: str
    body_sha256: str
    test_mode: bool
    object_type: str
    object_id: str
    attributes: dict[str, Any]
    custom: dict[str, Any] = field(default_factory=dict)

    @property
    def subscription_id(self) -> str | None:
        if self.object_type == "subscriptions":
            return self.object_id
        value = self.attributes.get("subscription_id")
        return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class EventOutcome:
    outcome: (
        str  # applied, duplicate, stale, test_mode_ignored, unlinked, recorded, refund, unknown
    )
    account_id: str | None = None
    user_id: str | None = None
    plan_before: str | None = None
    plan_after: str | None = None
    detail: str = ""

    @property
    def plan_changed(self) -> bool:
        return self.plan_before is not None and self.plan_after not in (None, self.plan_before)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC now: a time at the edge of datetime's range (9999-12-31T23:00-05:00) that
        # has no UTC form is unreadable here, instead of an OverflowError (a 500) later.
        return parsed.astimezone(UTC) if parsed.tzinfo else None
    except (ValueError, OverflowError):
        return None


def plan_for(attributes: dict[str, Any], now: datetime) -> str | None:
    """The plan a subscription's status gives, or None for a status we do not know."""
    status = attributes.get("status")
    if status in PRO_STATUSES:
        return "pro"
    if status in FREE_STATUSES:
        return "free"
    if status == "cancelled":  # paid up until ends_at
        ends = parse_time(attributes.get("ends_at"))
        return "pro" if ends is not None and now < ends else "free"
    if status == "paused":
        pause = attributes.get("pause")
        mode = pause.get("mode") if isinstance(pause, dict) else None
        return "pro" if mode == "free" else "free"
    return None


def _account(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return check_account_id(value)
    except InvalidAccount:
        return None


async def apply_event(
    ledger: Ledger, event: BillingEvent, *, accept_test_mode: bool
) -> EventOutcome:
    return await ledger.store.write(lambda conn: _apply(ledger, conn, event, accept_test_mode))


async def _apply(
    ledger: Ledger, conn: aiosqlite.Connection, event: BillingEvent, accept_test_mode: bool
) -> EventOutcome:
    now = ledger.clock.now()
    seen = await conn.execute_fetchall(
        "SELECT outcome FROM webhook_events WHERE body_sha256 = ?", (event.body_sha256,)
    )
    if seen:
        return EventOutcome("duplicate", detail=f"first outcome: {seen[0][0]}")
    sub_id = event.subscription_id
    stored = None
    if sub_id is not None:
        rows = await conn.execute_fetchall(
            "SELECT * FROM subscriptions WHERE subscription_id = ?", (sub_id,)
        )
        stored = dict(rows[0]) if rows else None
    account = _account(event.custom.get("account_id")) or (stored or {}).get("account_id")
    user = event.custom.get("user_id") or (stored or {}).get("user_id")
    user = str(user) if user not in (None, "") else None

    if event.test_mode and not accept_test_mode:
        result = EventOutcome("test_mode_ignored", account, user)
    elif event.object_type == "subscriptions":
        result = await _snapshot(ledger, conn, event, stored, account, user, now)
    elif event.name == "subscription_payment_success":
        result = await _payment(ledger, conn, event, stored, account, user, now)
    elif event.name in REFUNDS:
        log.warning(
            "refund %s on %s (%s): check it in LemonSqueezy", event.object_id, account, event.name
        )
        result = EventOutcome(
            "refund", account, user, detail=str(event.attributes.get("refunded_amount", ""))
        )
    elif event.name in RECORDED_ONLY:
        result = EventOutcome("recorded", account, user)
    else:
        result = EventOutcome("unknown", account, user)
    await conn.execute(
        "INSERT INTO webhook_events (event_name, object_id, subscription_id, account_id,"
        " body_sha256, outcome, detail, test_mode, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.name,
            event.object_id,
            sub_id,
            result.account_id,
            event.body_sha256,
            result.outcome,
            result.detail,
            int(event.test_mode),
            to_text(now),
        ),
    )
    return result


async def _current_plan(conn: aiosqlite.Connection, account_id: str) -> str:
    rows = await conn.execute_fetchall(
        "SELECT plan_type FROM usage_limits WHERE account_id = ?", (account_id,)
    )
    return rows[0][0] if rows else "free"


async def _snapshot(
    ledger: Ledger,
    conn: aiosqlite.Connection,
    event: BillingEvent,
    stored: dict[str, Any] | None,
    account: str | None,
    user: str | None,
    now: datetime,
) -> EventOutcome:
    attrs = event.attributes
    updated = parse_time(attrs.get("updated_at"))
    if updated is None or not isinstance(attrs.get("status"), str):
        return EventOutcome("invalid", account, user, detail="no status or updated_at")
    if stored is not None and updated < parse_time(stored["updated_at"]):  # type: ignore[operator]
        return EventOutcome("stale", account, user, detail=f"older than {stored['updated_at']}")
    plan = plan_for(attrs, now)
    urls = attrs.get("urls") if isinstance(attrs.get("urls"), dict) else {}
    await conn.execute(
        "INSERT INTO subscriptions (subscription_id, account_id, user_id, status, plan, renews_at,"
        " ends_at, portal_url, variant_id, test_mode, updated_at, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subscription_id) DO UPDATE SET"
        " account_id = COALESCE(excluded.account_id, subscriptions.account_id),"
        " user_id = COALESCE(excluded.user_id, subscriptions.user_id), status = excluded.status,"
        " plan = excluded.plan, renews_at = excluded.renews_at, ends_at = excluded.ends_at,"
        " portal_url = excluded.portal_url, variant_id = excluded.variant_id,"
        " test_mode = excluded.test_mode, updated_at = excluded.updated_at,"
        " received_at = excluded.received_at",
        (
            event.object_id,
            account,
            user,
            attrs["status"],
            plan or "unknown",
            _text(attrs.get("renews_at")),
            _text(attrs.get("ends_at")),
            _text(urls.get("customer_portal")),
            _text(attrs.get("variant_id")),
            int(event.test_mode),
            attrs["updated_at"],
            to_text(now),
        ),
    )
    if account is None:
        return EventOutcome("unlinked", None, user, detail="no account_id yet")
    before = await _current_plan(conn, account)
    if plan is None:
        return EventOutcome(
            "recorded", account, user, before, before, detail=f"status {attrs['status']}"
        )
    if plan != before:
        await ledger.set_plan_in(
            conn, account, plan, None, ACTOR, f"{event.name}: {attrs['status']}"
        )
    return EventOutcome("applied", account, user, before, plan, detail=str(attrs["status"]))


async def _payment(
    ledger: Ledger,
    conn: aiosqlite.Connection,
    event: BillingEvent,
    stored: dict[str, Any] | None,
    account: str | None,
    user: str | None,
    now: datetime,
) -> EventOutcome:
    reason = event.attributes.get("billing_reason")
    if reason not in FRESH_PERIOD_REASONS:
        return EventOutcome("recorded", account, user, detail=f"billing_reason {reason}")
    once = await conn.execute_fetchall(
        "SELECT 1 FROM webhook_events"
        " WHERE event_name = ? AND object_id = ? AND outcome = 'applied'",
        (event.name, event.object_id),
    )
    if once:
        return EventOutcome("duplicate", account, user, detail="invoice already applied")
    if account is None:
        return EventOutcome("unlinked", None, user, detail="invoice of an unknown subscription")
    renews = parse_time((stored or {}).get("renews_at"))
    period_end = renews if renews is not None and renews > now else add_months(now, 1)
    before = await _current_plan(conn, account)
    await ledger.set_plan_in(conn, account, "pro", period_end, ACTOR, f"payment {reason}")
    return EventOutcome(
        "applied", account, user, before, "pro", detail=f"fresh period to {to_text(period_end)}"
    )


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


async def subscription_of(ledger: Ledger, account_id: str) -> dict[str, Any] | None:
    """The newest subscription linked to an account, as stored (for /upgrade)."""
    rows = await ledger.store.reader.execute_fetchall(
        "SELECT * FROM subscriptions WHERE account_id = ? ORDER BY updated_at DESC LIMIT 1",
        (account_id,),
    )
    return dict(rows[0]) if rows else None
