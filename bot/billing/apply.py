"""Billing states applied to the ledger: plans, periods and grants, provider-neutral.

Promises:
- an event's changes and its record in `webhook_events` (its raw body included) commit
  in one transaction; an exact replay changes nothing, and an invoice, an order or a
  refund has its effect once whatever its body;
- each subscription's row is the newest snapshot by the provider's `updated_at`;
- the plan is a function of ALL the account's subscriptions (and the clock): Pro while
  any subscription of a configured Pro variant grants access, free when none does;
- the Pro period is on the monthly grid of the subscription that grants access and ends
  last, stepped from its renewal date: a monthly subscription's period is its billing
  cycle, an annual one's is each calendar month of its year. A period other than the
  current one is fresh (usage back to 0). Nothing here depends on the order in which
  events arrive, so every delivery order ends in the same plan and period;
- an invoice never revives a subscription whose stored state has ended;
- a token pack grants its tokens once per order; its refund takes back what is left of
  them, never below 0;
- a refund is a row of the account's history with its amount; with the refund policy
  `downgrade`, a full refund of the payment that started the current period ends Pro.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.billing import store
from bot.billing.states import (
    Access,
    BillingEvent,
    InvoiceState,
    Kind,
    SubscriptionState,
    money,
)
from ledger import Ledger
from ledger.clock import from_text, to_text
from ledger.periods import period_containing
from ledger.storage import Connection, serialize

log = logging.getLogger(__name__)

NOT_KNOWN_YET = store.NOT_KNOWN_YET


@dataclass(frozen=True)
class Rules:
    """The configuration billing applies events with."""

    pro_variants: frozenset[str]
    packs: dict[str, int] = field(default_factory=dict)
    store_id: str | None = None
    refund_policy: str = "keep"
    accept_test_mode: bool = False


@dataclass(frozen=True)
class Outcome:
    # applied, duplicate, stale, ignored, invalid, test_mode_ignored, unlinked, recorded,
    # refund, unknown
    outcome: str
    account_id: str | None = None
    user_id: str | None = None
    plan_before: str | None = None
    plan_after: str | None = None
    detail: str = ""
    effect_key: str | None = None

    @property
    def plan_changed(self) -> bool:
        return self.plan_before is not None and self.plan_after not in (None, self.plan_before)


async def apply_event(
    ledger: Ledger, event: BillingEvent, rules: Rules, body: bytes | None
) -> Outcome:
    return await ledger.store.write(lambda conn: _apply(ledger, conn, event, rules, body))


async def _apply(
    ledger: Ledger,
    conn: Connection,
    event: BillingEvent,
    rules: Rules,
    body: bytes | None,
) -> Outcome:
    # Sidecars behind a load balancer may receive one event (or two of one order) at
    # once: on PostgreSQL they take turns, so each is seen applied by the next.
    await serialize(conn, f"billing:{event.provider}")
    seen = await store.event_by_body(conn, event.provider, event.body_sha256)
    if seen is not None and seen.outcome not in store.RETRYABLE:
        return Outcome("duplicate", seen.account_id, detail=f"first outcome: {seen.outcome}")
    result = await decide(ledger, conn, event, rules)
    if seen is not None and result.outcome == seen.outcome:
        # Looked at again and still not applicable: it wrote nothing, and stays as it was.
        return Outcome("duplicate", seen.account_id, detail=f"again {seen.outcome}")
    await store.record_event(
        conn,
        {
            "provider": event.provider,
            "event_name": event.name,
            "object_id": event.object_id,
            "subscription_id": event.subscription_id,
            "account_id": result.account_id,
            "body_sha256": event.body_sha256,
            "body": body,
            "outcome": result.outcome,
            "detail": result.detail,
            "effect_key": result.effect_key,
            "test_mode": int(event.test_mode),
            "received_at": to_text(ledger.clock.now()),
        },
        seen,
    )
    return result


async def keep_invalid(ledger: Ledger, event: BillingEvent, body: bytes, reason: str) -> Outcome:
    """Record an event whose application failed, raw body and reason, changing nothing else."""
    bad = dataclasses.replace(event, invalid=f"could not be applied: {reason}")
    return await ledger.store.write(
        lambda conn: _apply(ledger, conn, bad, Rules(frozenset()), body)
    )


async def decide(ledger: Ledger, conn: Connection, event: BillingEvent, rules: Rules) -> Outcome:
    """What the event does, done inside the caller's transaction."""
    account, user = event.account_id, event.user_id
    if event.invalid is not None:
        return Outcome("invalid", account, user, detail=event.invalid)
    if event.test_mode and not rules.accept_test_mode:
        return Outcome("test_mode_ignored", account, user, detail="test mode is off")
    if rules.store_id and event.store_id and event.store_id != rules.store_id:
        return Outcome("ignored", account, user, detail=f"another store ({event.store_id})")
    if event.subscription is not None:
        return await _snapshot(ledger, conn, event, event.subscription, rules)
    if event.kind is Kind.PAYMENT:
        return await _payment(ledger, conn, event, rules)
    if event.kind is Kind.PAYMENT_REFUNDED:
        return await _payment_refund(ledger, conn, event, rules)
    if event.kind is Kind.ORDER:
        return await _order(ledger, conn, event, rules)
    if event.kind is Kind.ORDER_REFUNDED:
        return await _order_refund(ledger, conn, event, rules)
    if event.kind is Kind.RECORDED:
        return Outcome("recorded", account, user)
    return Outcome("unknown", account, user)


# ---- subscriptions ---------------------------------------------------------------------


async def _snapshot(
    ledger: Ledger,
    conn: Connection,
    event: BillingEvent,
    state: SubscriptionState,
    rules: Rules,
) -> Outcome:
    stored = await store.subscription(conn, event.provider, state.subscription_id)
    account = event.account_id or (stored or {}).get("account_id")
    user = event.user_id or (stored or {}).get("user_id")
    if stored is None and state.variant_id not in rules.pro_variants:
        return Outcome(
            "ignored", account, user, detail=f"not a Pro variant (variant {state.variant_id})"
        )
    if stored is not None and state.updated_at < from_text(stored["updated_at"]):
        return Outcome("stale", account, user, detail=f"older than {stored['updated_at']}")
    last_invoice = (stored or {}).get("last_invoice_id")
    if stored is None:
        last_invoice = await store.invoice_waiting(conn, event.provider, state.subscription_id)
    access = state.access
    if access is Access.UNKNOWN:  # a new status word: what it gives stays as it was
        log.warning("subscription %s has an unknown status %r", state.subscription_id, state.status)
        access = Access((stored or {}).get("access") or Access.UNKNOWN)
    await store.save_subscription(
        conn,
        {
            "provider": event.provider,
            "subscription_id": state.subscription_id,
            "account_id": account,
            "user_id": user,
            "status": state.status,
            "access": access.value,
            "renews_at": _time(state.renews_at),
            "ends_at": _time(state.ends_at),
            "variant_id": state.variant_id,
            "product_id": state.product_id,
            "order_id": state.order_id,
            "portal_url": state.portal_url,
            "needs_payment_method": int(state.needs_payment_method),
            "last_invoice_id": last_invoice,
            "refunded_invoice": (stored or {}).get("refunded_invoice"),
            "test_mode": int(event.test_mode),
            "updated_at": to_text(state.updated_at),
            "received_at": to_text(ledger.clock.now()),
        },
    )
    if account is None:
        return Outcome("unlinked", None, user, detail="no account_id yet: `billing link` it")
    moved_from = (stored or {}).get("account_id")
    if moved_from and moved_from != account:  # the old account loses what it gave
        await recompute(ledger, conn, moved_from, rules, f"subscription moved to {account}")
    reason = f"{event.name}: {state.status}"
    before, after = await recompute(ledger, conn, account, rules, reason)
    return Outcome("applied", account, user, before, after, detail=state.status)


def grants(row: dict[str, Any], now: datetime, rules: Rules) -> bool:
    """This stored subscription makes its account Pro at `now`."""
    if row["variant_id"] not in rules.pro_variants or row["refunded_invoice"]:
        return False
    if row["access"] == Access.GRANTED:
        return True
    ends = row["ends_at"]
    return row["access"] == Access.UNTIL_END and ends is not None and now < from_text(ends)


def ends_last_key(row: dict[str, Any]) -> tuple[str, int, str]:
    """Order of subscriptions by how long they go on: the one that ends last is last.
    A renewing one goes on to its renewal (and beyond); a cancelled one to its end."""
    cancelled = row["access"] == Access.UNTIL_END
    end = (row["ends_at"] if cancelled else row["renews_at"] or row["ends_at"]) or ""
    return (end, 0 if cancelled else 1, row["subscription_id"])


def governing(rows: list[dict[str, Any]], now: datetime, rules: Rules) -> dict[str, Any] | None:
    """The subscription that grants access and ends last: it sets the period and is the
    one `/upgrade` shows."""
    granting = [r for r in rows if grants(r, now, rules)]
    return max(granting, key=ends_last_key) if granting else None


async def recompute(
    ledger: Ledger,
    conn: Connection,
    account_id: str,
    rules: Rules,
    reason: str,
    actor: str = "billing",
) -> tuple[str, str]:
    """Put the account on the plan and period its subscriptions give; (before, after)."""
    now = ledger.clock.now()
    rows = await store.subscriptions_of(conn, account_id)
    plan_rows = await conn.execute_fetchall(
        "SELECT plan_type FROM usage_limits WHERE account_id = ?", (account_id,)
    )
    before = plan_rows[0][0] if plan_rows else "free"
    sub = governing(rows, now, rules)
    if sub is None:
        if before != "free":
            await ledger.enter_period_in(conn, account_id, "free", None, actor, reason)
        return before, "free"
    anchor_text = sub["renews_at"] or sub["ends_at"]
    period = None
    if anchor_text is not None:
        anchor = from_text(anchor_text)
        start, end = period_containing(anchor, now)
        period = (start, end, anchor)
    await ledger.enter_period_in(
        conn, account_id, "pro", period, actor, f"{reason} (subscription {sub['subscription_id']})"
    )
    return before, "pro"


# ---- invoices --------------------------------------------------------------------------


async def _of_invoice(
    conn: Connection, event: BillingEvent
) -> tuple[InvoiceState, dict[str, Any] | None, str | None, str | None]:
    """The invoice, its stored subscription, and the account and buyer it maps to."""
    invoice = event.invoice
    assert invoice is not None
    stored = await store.subscription(conn, event.provider, invoice.subscription_id)
    account = (stored or {}).get("account_id") or event.account_id
    user = (stored or {}).get("user_id") or event.user_id
    return invoice, stored, account, user


async def _payment(ledger: Ledger, conn: Connection, event: BillingEvent, rules: Rules) -> Outcome:
    invoice, stored, account, user = await _of_invoice(conn, event)
    if not (invoice.paid and invoice.starts_period):
        return Outcome("recorded", account, user, detail="not a payment for a new cycle")
    key = f"invoice:{invoice.invoice_id}"
    if await store.effect_applied(conn, event.provider, key):
        return Outcome("duplicate", account, user, detail="invoice already applied")
    if stored is None:
        # The plan and the period come from the snapshot, whenever it arrives; the
        # snapshot then adopts this invoice as the one that started its cycle.
        return Outcome("recorded", account, user, detail=NOT_KNOWN_YET)
    account = stored["account_id"]  # the link, which _of_invoice preferred anyway
    if account is None:
        return Outcome("unlinked", None, user, detail="invoice of an unlinked subscription")
    if stored["variant_id"] not in rules.pro_variants:
        return Outcome("ignored", account, user, detail="not a Pro variant")
    if stored["access"] in (Access.NONE, Access.UNKNOWN) or (
        stored["access"] == Access.UNTIL_END and not grants(stored, ledger.clock.now(), rules)
    ):
        return Outcome(
            "recorded",
            account,
            user,
            detail=f"the subscription has ended ({stored['status']}): an invoice never revives it",
        )
    await conn.execute(
        "UPDATE subscriptions SET last_invoice_id = ?, refunded_invoice = NULL"
        " WHERE provider = ? AND subscription_id = ?",
        (invoice.invoice_id, event.provider, invoice.subscription_id),
    )
    before, after = await recompute(
        ledger, conn, account, rules, f"payment of {invoice.invoice_id}"
    )
    return Outcome("applied", account, user, before, after, detail="paid", effect_key=key)


async def _payment_refund(
    ledger: Ledger, conn: Connection, event: BillingEvent, rules: Rules
) -> Outcome:
    invoice, stored, account, user = await _of_invoice(conn, event)
    key = f"refund:{event.name}:{event.object_id}:{invoice.refunded_amount}"
    if await store.effect_applied(conn, event.provider, key):
        return Outcome("duplicate", account, user, detail="refund already recorded")
    if account is None:
        return Outcome("unlinked", None, user, detail="refund of an unknown subscription")
    amount = money(invoice.refunded_amount, invoice.currency)
    detail = f"invoice {invoice.invoice_id} of subscription {invoice.subscription_id}: {amount}"
    downgrade = (
        rules.refund_policy == "downgrade"
        and invoice.fully_refunded
        and stored is not None
        and stored["last_invoice_id"] == invoice.invoice_id
    )
    if downgrade:
        await conn.execute(
            "UPDATE subscriptions SET refunded_invoice = ?"
            " WHERE provider = ? AND subscription_id = ?",
            (invoice.invoice_id, event.provider, invoice.subscription_id),
        )
        detail += " refunded in full; policy downgrade: Pro from it ends now"
    else:
        detail += f" refunded; policy {rules.refund_policy}: the subscription goes on"
    await ledger.note_in(conn, account, "refund", event.provider, detail)
    before = after = None
    if downgrade:  # only then may the plan move; a refund alone never touches it
        reason = f"refund of {invoice.invoice_id}"
        before, after = await recompute(ledger, conn, account, rules, reason)
    log.warning("refund on %s: %s", account, detail)
    return Outcome("refund", account, user, before, after, detail=detail, effect_key=key)


# ---- orders: token packs ---------------------------------------------------------------


async def _order(ledger: Ledger, conn: Connection, event: BillingEvent, rules: Rules) -> Outcome:
    order = event.order
    assert order is not None
    account, user = event.account_id, event.user_id
    tokens = rules.packs.get(order.variant_id or "")
    if tokens is None:
        if order.variant_id in rules.pro_variants:
            return Outcome("recorded", account, user, detail="a Pro subscription's order")
        return Outcome("ignored", account, user, detail=f"not a pack (variant {order.variant_id})")
    if not order.paid:
        return Outcome("recorded", account, user, detail="not paid")
    if account is None:
        return Outcome("unlinked", None, user, detail="a pack order without account_id")
    inserted = await store.insert_order(
        conn,
        {
            "provider": event.provider,
            "order_id": order.order_id,
            "account_id": account,
            "variant_id": order.variant_id,
            "tokens": tokens,
            "total": order.total,
            "created_at": to_text(ledger.clock.now()),
        },
    )
    if not inserted:
        return Outcome("duplicate", account, user, detail="pack already granted")
    await ledger.grant_in(
        conn,
        account,
        tokens,
        event.provider,
        f"token pack: order {order.order_id} ({money(order.total, order.currency)})",
        operation="pack_grant",
    )
    return Outcome("applied", account, user, detail=f"granted {tokens} tokens")


async def _order_refund(
    ledger: Ledger, conn: Connection, event: BillingEvent, rules: Rules
) -> Outcome:
    order = event.order
    assert order is not None
    key = f"refund:{event.name}:{order.order_id}:{order.refunded_amount}"
    pack = await store.order(conn, event.provider, order.order_id)
    sub = await store.subscription_by_order(conn, event.provider, order.order_id)
    account = (pack or sub or {}).get("account_id") or event.account_id
    user = event.user_id
    if await store.effect_applied(conn, event.provider, key):
        return Outcome("duplicate", account, user, detail="refund already recorded")
    amount = money(order.refunded_amount, order.currency)
    if pack is not None:
        # The share of the pack refunded, less what earlier refunds of it asked back.
        share = (
            pack["tokens"]
            if order.refunded_amount >= pack["total"]
            else (pack["tokens"] * order.refunded_amount // max(1, pack["total"]))
        )
        asked = max(0, share - pack["tokens_revoked"])
        detail = f"order {order.order_id} refunded {amount}"
        if asked:
            taken = await ledger.revoke_in(
                conn, pack["account_id"], asked, event.provider, detail, operation="pack_revoke"
            )
            await store.add_revoked(conn, event.provider, order.order_id, asked)
            detail += f": took back {taken.applied} of {asked} pack tokens"
            if taken.applied < asked:
                detail += f" ({asked - taken.applied} already spent)"
        await ledger.note_in(conn, pack["account_id"], "refund", event.provider, detail)
        return Outcome("refund", pack["account_id"], user, detail=detail, effect_key=key)
    if sub is None and order.variant_id not in rules.pro_variants:
        return Outcome("ignored", account, user, detail="not a pack or a Pro order")
    if account is None:
        return Outcome("unlinked", None, user, detail="refund of an unknown order")
    detail = f"order {order.order_id} refunded {amount} (policy {rules.refund_policy})"
    await ledger.note_in(conn, account, "refund", event.provider, detail)
    return Outcome("refund", account, user, detail=detail, effect_key=key)


def _time(value: datetime | None) -> str | None:
    return None if value is None else to_text(value)
