"""LemonSqueezy webhooks: the signature, and JSON:API bodies turned into neutral events.

`X-Signature` is the HMAC-SHA256 of the raw body with the signing secret, lowercase hex
(compared in constant time, case and surrounding blanks forgiven). A body that is not a
JSON event at all is `InvalidEvent` (400). An event whose fields are missing or of the
wrong type is still an event: it comes back with `invalid` set, so that it is kept with
its reason and can be replayed once the cause is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from bot.billing.lemonsqueezy.statuses import EVENT_KINDS, PERIOD_REASONS, PROVIDER, access_of
from bot.billing.provider import InvalidEvent
from bot.billing.states import (
    BillingEvent,
    InvoiceState,
    Kind,
    OrderState,
    SubscriptionState,
)
from ledger import InvalidAccount, check_account_id


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, given: str) -> bool:
    return hmac.compare_digest(given.strip().lower().encode(), signature(secret, body).encode())


class Unreadable(ValueError):
    """A field the event needs is missing or mistyped (the message says which)."""


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


def _id(value: Any) -> str | None:
    """An id as LemonSqueezy sends it (a number, or its text); None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Unreadable(f"an id of type {type(value).__name__}")
    return str(value)


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unreadable(f"{name} is not text")
    return value


def _currency(a: dict[str, Any]) -> str:
    currency = a.get("currency")
    return currency if isinstance(currency, str) else ""


def _cents(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def _account(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return check_account_id(value)
    except InvalidAccount:
        return None


def parse_event(body: bytes) -> BillingEvent:
    try:
        payload = json.loads(body)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer over Python's
    # digit limit; RecursionError is nesting deeper than the interpreter's stack.
    except (ValueError, RecursionError):
        raise InvalidEvent("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("the body is not a JSON object")
    meta, data = payload.get("meta"), payload.get("data")
    if not isinstance(meta, dict) or not isinstance(data, dict):
        raise InvalidEvent("meta and data must be objects")
    name = meta.get("event_name")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("meta.event_name is missing")
    attributes = data.get("attributes", {})
    custom = meta.get("custom_data") or {}
    if not isinstance(attributes, dict) or not isinstance(custom, dict):
        raise InvalidEvent("data.attributes and meta.custom_data must be objects")
    object_id = data.get("id")
    if not isinstance(object_id, str | int) or isinstance(object_id, bool):
        raise InvalidEvent("data.id is missing")
    user = custom.get("user_id")
    is_subscription = data.get("type") == "subscriptions"
    kind = Kind.SUBSCRIPTION if is_subscription else EVENT_KINDS.get(name, Kind.UNKNOWN)
    fields: dict[str, Any] = {}
    invalid = None
    subscription_id = str(object_id) if is_subscription else None
    try:
        if not is_subscription:
            subscription_id = _id(attributes.get("subscription_id"))
        store_id = _id(attributes.get("store_id"))
        if kind is Kind.SUBSCRIPTION:
            fields["subscription"] = _subscription(str(object_id), attributes)
        elif kind in (Kind.PAYMENT, Kind.PAYMENT_REFUNDED):
            fields["invoice"] = _invoice(str(object_id), subscription_id, attributes)
        elif kind in (Kind.ORDER, Kind.ORDER_REFUNDED):
            fields["order"] = _order(str(object_id), attributes)
    except Unreadable as error:
        invalid, store_id = str(error), None
    return BillingEvent(
        provider=PROVIDER,
        name=name,
        body_sha256=hashlib.sha256(body).hexdigest(),
        object_id=str(object_id),
        kind=kind,
        test_mode=meta.get("test_mode") is True,
        store_id=store_id,
        account_id=_account(custom.get("account_id")),
        user_id=str(user) if isinstance(user, str | int) and user != "" else None,
        subscription_id=subscription_id,
        invalid=invalid,
        **fields,
    )


def _subscription(sub_id: str, a: dict[str, Any]) -> SubscriptionState:
    status = a.get("status")
    updated = parse_time(a.get("updated_at"))
    if not isinstance(status, str) or updated is None:
        raise Unreadable("no status or updated_at")
    pause = a.get("pause")
    mode = pause.get("mode") if isinstance(pause, dict) else None
    raw_urls = a.get("urls")
    urls: dict[str, Any] = raw_urls if isinstance(raw_urls, dict) else {}
    return SubscriptionState(
        subscription_id=sub_id,
        status=status,
        access=access_of(status, mode if isinstance(mode, str) else None),
        updated_at=updated,
        renews_at=parse_time(a.get("renews_at")),
        ends_at=parse_time(a.get("ends_at")),
        variant_id=_id(a.get("variant_id")),
        product_id=_id(a.get("product_id")),
        order_id=_id(a.get("order_id")),
        portal_url=_text(urls.get("customer_portal"), "urls.customer_portal"),
        needs_payment_method=status == "past_due",
    )


def _invoice(invoice_id: str, sub_id: str | None, a: dict[str, Any]) -> InvoiceState:
    if sub_id is None:
        raise Unreadable("no subscription_id")
    reason = _text(a.get("billing_reason"), "billing_reason")
    status = _text(a.get("status"), "status")
    total = _cents(a.get("total"))
    refunded = _cents(a.get("refunded_amount"))
    if a.get("refunded") is True and refunded == 0:  # refunded in full, amount not given
        refunded = total
    return InvoiceState(
        invoice_id=invoice_id,
        subscription_id=sub_id,
        paid=status in (None, "paid"),
        starts_period=reason in PERIOD_REASONS,
        total=total,
        refunded_amount=refunded,
        currency=_currency(a),
    )


def _order(order_id: str, a: dict[str, Any]) -> OrderState:
    item = a.get("first_order_item")
    item = item if isinstance(item, dict) else {}
    status = _text(a.get("status"), "status")
    total = _cents(a.get("total"))
    refunded = _cents(a.get("refunded_amount"))
    if a.get("refunded") is True and refunded == 0:
        refunded = total
    return OrderState(
        order_id=order_id,
        variant_id=_id(item.get("variant_id")),
        product_id=_id(item.get("product_id")),
        paid=status == "paid",
        total=total,
        refunded_amount=refunded,
        currency=_currency(a),
    )
