"""LemonSqueezy webhook bodies in their documented shapes, and their signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SECRET = "whsec-test-signing-secret"


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
) -> dict[str, Any]:
    return {
        "meta": _meta(event, account_id, user_id, test_mode),
        "data": {
            "type": "subscriptions",
            "id": sub_id,
            "attributes": {
                "store_id": 1,
                "customer_id": 7,
                "order_id": 11,
                "order_item_id": 12,
                "product_id": 3,
                "variant_id": 4,
                "product_name": "Pro",
                "variant_name": "Monthly",
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
                "renews_at": renews_at,
                "ends_at": ends_at,
                "created_at": "2026-11-24T09:00:00.000000Z",
                "updated_at": updated_at,
                "test_mode": test_mode,
                "urls": {
                    "update_payment_method": "https://shop.example/billing/1/update",
                    "customer_portal": "https://shop.example/billing?expires=1",
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
) -> dict[str, Any]:
    return {
        "meta": _meta(event, account_id, user_id, test_mode),
        "data": {
            "type": "subscription-invoices",
            "id": invoice_id,
            "attributes": {
                "store_id": 1,
                "subscription_id": int(sub_id),
                "customer_id": 7,
                "billing_reason": billing_reason,
                "status": status,
                "status_formatted": status.title(),
                "refunded": status == "refunded",
                "refunded_at": None,
                "currency": "USD",
                "subtotal": 3000,
                "total": 3000,
                "test_mode": test_mode,
                "created_at": "2026-11-24T10:00:00.000000Z",
                "updated_at": "2026-11-24T10:00:00.000000Z",
            },
        },
    }


def order(
    event: str, *, order_id: str = "11", status: str = "paid", account_id: str | None = "guild:1000"
) -> dict[str, Any]:
    return {
        "meta": _meta(event, account_id, "1", False),
        "data": {
            "type": "orders",
            "id": order_id,
            "attributes": {
                "store_id": 1,
                "customer_id": 7,
                "identifier": "abc",
                "order_number": 1,
                "status": status,
                "refunded": status == "refunded",
                "total": 3000,
                "currency": "USD",
                "test_mode": False,
                "first_order_item": {"product_id": 3, "variant_id": 4, "price": 3000},
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
