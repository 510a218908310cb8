"""Provider-neutral billing states: what a payment provider's event says, reduced to
the few facts the plan, the period and the grants depend on.

A provider module (bot/billing/lemonsqueezy/) turns its own payloads into these; the
rules in apply.py read nothing else, so a second provider is a new module, not a rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Access(StrEnum):
    """What a subscription's status gives its account."""

    GRANTED = "granted"  # active, on trial, past due, paused without pausing service
    UNTIL_END = "until_end"  # cancelled: paid up until its end
    NONE = "none"  # expired, unpaid, paused with service paused
    UNKNOWN = "unknown"  # a status this code does not know: the previous access stands


class Kind(StrEnum):
    SUBSCRIPTION = "subscription"  # a full snapshot of one subscription
    PAYMENT = "payment"  # a subscription's invoice was paid
    PAYMENT_REFUNDED = "payment_refunded"
    ORDER = "order"  # a one-time purchase (a token pack, or a subscription's first order)
    ORDER_REFUNDED = "order_refunded"
    RECORDED = "recorded"  # known, changes nothing (a failed payment: the status follows)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SubscriptionState:
    subscription_id: str
    status: str  # the provider's own word, shown to operators
    access: Access
    updated_at: datetime  # the provider's: snapshots are ordered by it
    renews_at: datetime | None
    ends_at: datetime | None
    variant_id: str | None
    product_id: str | None
    order_id: str | None
    portal_url: str | None
    needs_payment_method: bool  # past due: the member should update the card


@dataclass(frozen=True)
class InvoiceState:
    invoice_id: str
    subscription_id: str
    paid: bool
    starts_period: bool  # the first payment or a renewal (not a mid-cycle change)
    total: int  # cents
    refunded_amount: int  # cents
    currency: str

    @property
    def fully_refunded(self) -> bool:
        return self.total > 0 and self.refunded_amount >= self.total


@dataclass(frozen=True)
class OrderState:
    order_id: str
    variant_id: str | None
    product_id: str | None
    paid: bool
    total: int
    refunded_amount: int
    currency: str


@dataclass(frozen=True)
class BillingEvent:
    """One verified event of a provider."""

    provider: str
    name: str  # the provider's event name
    body_sha256: str
    object_id: str
    kind: Kind
    test_mode: bool
    store_id: str | None
    account_id: str | None  # from the checkout's custom data, when well formed
    user_id: str | None
    subscription_id: str | None
    subscription: SubscriptionState | None = None
    invoice: InvoiceState | None = None
    order: OrderState | None = None
    invalid: str | None = None  # why it cannot be applied (kept for a replay)


def money(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency}".strip()
