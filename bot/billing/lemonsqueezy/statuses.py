"""LemonSqueezy's subscription statuses and event names, as neutral access and kinds."""

from __future__ import annotations

from bot.billing.states import Access, Kind

PROVIDER = "lemonsqueezy"

STATUS_ACCESS: dict[str, Access] = {
    "active": Access.GRANTED,
    "on_trial": Access.GRANTED,
    "past_due": Access.GRANTED,  # LemonSqueezy retries the card for two weeks meanwhile
    "cancelled": Access.UNTIL_END,  # paid up until ends_at
    "expired": Access.NONE,
    "unpaid": Access.NONE,
    # "paused" depends on pause.mode: see access_of
}

EVENT_KINDS: dict[str, Kind] = {
    "subscription_payment_success": Kind.PAYMENT,
    "subscription_payment_refunded": Kind.PAYMENT_REFUNDED,
    "subscription_payment_failed": Kind.RECORDED,
    "subscription_payment_recovered": Kind.RECORDED,
    "order_created": Kind.ORDER,
    "order_refunded": Kind.ORDER_REFUNDED,
}

# billing_reason of an invoice that pays for a new cycle ("updated" is a mid-cycle change).
PERIOD_REASONS = {"initial", "renewal"}


def access_of(status: str, pause_mode: str | None) -> Access:
    if status == "paused":  # mode "free": service goes on while payment collection pauses
        return Access.GRANTED if pause_mode == "free" else Access.NONE
    return STATUS_ACCESS.get(status, Access.UNKNOWN)
