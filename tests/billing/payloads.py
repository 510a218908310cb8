"""LemonSqueezy webhook bodies in their documented shapes, and their signatures.

Written from LemonSqueezy's documentation of the subscription, subscription-invoice and
order objects, with the fields real deliveries carry: `meta.webhook_id`, `custom_data`
with string values, `test_mode`, `store_id`, `variant_id`, `product_id`, `total`,
`billing_reason`, `urls`, `pause`, `trial_ends_at`, `first_subscription_item`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SECRET = "whsec-test-signing-secret"
STORE_ID = "1"
PRODUCT_PRO = 3
MONTHLY = "4"  # Pro, $30 a month
ANNUAL = "5"  # Pro, $300 a year
PRO_VARIANTS = (MONTHLY, ANNUAL)
USAGE_VARIANT = "77"  # another product of the store: $0, usage-based
PACK_VARIANT = "9"  # a one-time token pack
PACK_TOKENS = 1_000_000


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _meta(
    event: str, account_id: str | None, user_id: str | None, test_mode: bool
) -> dict[str, Any]:
    meta: dict[str, Any] = {"event_name": event, "test_mode": test_mode, "webhook_id": "wh-1"}
    custom = {k: v for k, v in (("account_id", account_id), ("user_id", user_id)) if v is not None}
    if custom:
        meta["custom_data"] = custom
    return meta


def subscription(
    event: str,
    *,
    sub_id: str = "101",
    status: str = "active",
    updated_at: str = "2026-11-24T10:00:00.000000Z",
    renews_at: str | None = "2026-12-24T10:00:00.000000Z",
    ends_at: str | None = None,
    pause: dict[str, Any] | None = None,
    account_id: str | None = "guild:1000",
    user_id: str | None = "1",
    test_mode: bool = False,
    variant_id: str = MONTHLY,
    order_id: int = 11,
    created_at: str = "2026-11-24T09:00:00.000000Z",
    webhook_id: str = "wh-1",
) -> dict[str, Any]:
    meta = _meta(event, account_id, user_id, test_mode)
    meta["webhook_id"] = webhook_id
    return {
        "meta": meta,
        "data": {
            "type": "subscriptions",
            "id": sub_id,
            "attributes": {
                "store_id": int(STORE_ID),
                "customer_id": 7,
                "order_id": order_id,
                "order_item_id": order_id + 1,
                "product_id": PRODUCT_PRO if variant_id in PRO_VARIANTS else 8,
                "variant_id": int(variant_id),
                "product_name": "Pro",
                "variant_name": {MONTHLY: "Monthly", ANNUAL: "Annual"}.get(variant_id, "Other"),
                "user_name": "Ada",
                "user_email": "ada@example.com",
                "status": status,
                "status_formatted": status.replace("_", " ").title(),
                "card_brand": "visa",
                "card_last_four": "4242",
                "pause": pause,
                "cancelled": status == "cancelled",
                "trial_ends_at": None,
                "billing_anchor": 24,
                "first_subscription_item": {
                    "id": 21,
                    "subscription_id": int(sub_id) if str(sub_id).isdigit() else 0,
                    "price_id": 31,
                    "quantity": 1,
                    "is_usage_based": variant_id == USAGE_VARIANT,
                    "created_at": created_at,
                    "updated_at": updated_at,
                },
                "renews_at": renews_at,
                "ends_at": ends_at,
                "created_at": created_at,
                "updated_at": updated_at,
                "test_mode": test_mode,
                "urls": {
                    "update_payment_method": "https://shop.example/billing/1/update",
                    "customer_portal": "https://shop.example/billing?expires=1",
                    "customer_portal_update_subscription": "https://shop.example/billing/1/plan",
                },
            },
        },
    }


def invoice(
    event: str,
    *,
    invoice_id: str = "501",
    sub_id: str = "101",
    billing_reason: str = "initial",
    status: str = "paid",
    account_id: str | None = "guild:1000",
    user_id: str | None = "1",
    test_mode: bool = False,
    total: int = 3000,
    refunded_amount: int | None = None,
    created_at: str = "2026-11-24T10:00:00.000000Z",
) -> dict[str, Any]:
    refunded = status in ("refunded", "partial_refund")
    if refunded_amount is None:
        refunded_amount = total if status == "refunded" else 0
    return {
        "meta": _meta(event, account_id, user_id, test_mode),
        "data": {
            "type": "subscription-invoices",
            "id": invoice_id,
            "attributes": {
                "store_id": int(STORE_ID),
                "subscription_id": int(sub_id),
                "customer_id": 7,
                "user_name": "Ada",
                "user_email": "ada@example.com",
                "billing_reason": billing_reason,
                "card_brand": "visa",
                "card_last_four": "4242",
                "currency": "USD",
                "currency_rate": "1.00000000",
                "status": status,
                "status_formatted": status.replace("_", " ").title(),
                "refunded": status == "refunded",
                "refunded_at": created_at if refunded else None,
                "subtotal": total,
                "discount_total": 0,
                "tax": 0,
                "total": total,
                "refunded_amount": refunded_amount,
                "total_usd": total,
                "test_mode": test_mode,
                "urls": {"invoice_url": f"https://shop.example/invoices/{invoice_id}"},
                "created_at": created_at,
                "updated_at": created_at,
            },
        },
    }


def order(
    event: str,
    *,
    order_id: str = "11",
    status: str = "paid",
    account_id: str | None = "guild:1000",
    variant_id: str = MONTHLY,
    total: int = 3000,
    refunded_amount: int | None = None,
    webhook_id: str = "wh-1",
) -> dict[str, Any]:
    if refunded_amount is None:
        refunded_amount = total if status == "refunded" else 0
    meta = _meta(event, account_id, "1", False)
    meta["webhook_id"] = webhook_id
    return {
        "meta": meta,
        "data": {
            "type": "orders",
            "id": order_id,
            "attributes": {
                "store_id": int(STORE_ID),
                "customer_id": 7,
                "identifier": f"uuid-{order_id}",
                "order_number": int(order_id) if order_id.isdigit() else 1,
                "user_name": "Ada",
                "user_email": "ada@example.com",
                "currency": "USD",
                "currency_rate": "1.0000",
                "subtotal": total,
                "discount_total": 0,
                "tax": 0,
                "total": total,
                "refunded_amount": refunded_amount,
                "total_usd": total,
                "status": status,
                "status_formatted": status.replace("_", " ").title(),
                "refunded": status == "refunded",
                "refunded_at": "2026-11-26T10:00:00.000000Z" if refunded_amount else None,
                "test_mode": False,
                "first_order_item": {
                    "id": 12,
                    "order_id": int(order_id) if order_id.isdigit() else 1,
                    "product_id": PRODUCT_PRO if variant_id in PRO_VARIANTS else 8,
                    "variant_id": int(variant_id),
                    "product_name": "Tokens" if variant_id == PACK_VARIANT else "Pro",
                    "variant_name": "Pack" if variant_id == PACK_VARIANT else "Monthly",
                    "price": total,
                    "quantity": 1,
                    "created_at": "2026-11-24T10:00:00.000000Z",
                    "updated_at": "2026-11-24T10:00:00.000000Z",
                },
                "urls": {"receipt": f"https://shop.example/receipts/{order_id}"},
                "created_at": "2026-11-24T10:00:00.000000Z",
                "updated_at": "2026-11-24T10:00:00.000000Z",
            },
        },
    }


def every_event() -> list[dict[str, Any]]:
    """One body of each event the issue names, in a plausible lifecycle order."""
    return [
        order("order_created"),
        subscription("subscription_created"),
        invoice("subscription_payment_success", billing_reason="initial"),
        subscription("subscription_updated", updated_at="2026-11-25T10:00:00.000000Z"),
        subscription(
            "subscription_paused",
            status="paused",
            pause={"mode": "free", "resumes_at": None},
            updated_at="2026-11-26T10:00:00.000000Z",
        ),
        subscription("subscription_unpaused", updated_at="2026-11-27T10:00:00.000000Z"),
        invoice(
            "subscription_payment_failed",
            invoice_id="502",
            billing_reason="renewal",
            status="pending",
        ),
        invoice("subscription_payment_success", invoice_id="503", billing_reason="renewal"),
        invoice(
            "subscription_payment_refunded",
            invoice_id="503",
            billing_reason="renewal",
            status="refunded",
        ),
        subscription(
            "subscription_cancelled",
            status="cancelled",
            ends_at="2027-06-01T00:00:00.000000Z",
            updated_at="2026-11-28T10:00:00.000000Z",
        ),
        subscription("subscription_resumed", updated_at="2026-11-29T10:00:00.000000Z"),
        subscription(
            "subscription_expired", status="expired", updated_at="2026-11-30T10:00:00.000000Z"
        ),
        order("order_refunded", status="refunded"),
    ]
