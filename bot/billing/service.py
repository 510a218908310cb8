"""What the commands need of billing: checkout links for Pro and the token packs, the
subscription that grants an account Pro, and the link that manages it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from bot.billing import store
from bot.billing.apply import Rules, ends_last_key, governing
from bot.billing.lemonsqueezy.client import (
    BillingNotConfigured,
    BillingUnavailable,
    LemonSqueezyClient,
    static_checkout_url,
)
from bot.config import Config
from ledger import Ledger
from ledger.clock import from_text

__all__ = ["Billing", "BillingNotConfigured", "BillingUnavailable", "rules_of"]


def rules_of(config: Config) -> Rules:
    ls = config.lemonsqueezy
    return Rules(
        pro_variants=ls.pro_variants(),
        packs=dict(ls.packs),
        store_id=ls.store_id or None,
        refund_policy=config.billing.refund_policy,
        accept_test_mode=ls.test_mode,
    )


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    status: str
    grants_access: bool
    renews_at: datetime | None
    ends_at: datetime | None
    user_id: str | None  # the buyer, from the checkout's custom data
    needs_payment_method: bool

    @property
    def cancelled(self) -> bool:
        return self.ends_at is not None and self.status == "cancelled"


@dataclass(frozen=True)
class PackOffer:
    tokens: int
    url: str


@dataclass(frozen=True)
class ManageLink:
    label: str
    url: str


class Billing:
    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.client = LemonSqueezyClient(config)

    async def close(self) -> None:
        await self.client.close()

    @property
    def api_key(self) -> str | None:
        return self.client.api_key

    async def checkout_url(self, account_id: str, user_id: int) -> str:
        """A Pro checkout link for `account_id`, bought by `user_id`."""
        if not self.api_key:
            url = static_checkout_url(self.config, account_id, user_id)
            if url is None:
                raise BillingNotConfigured()
            return url
        return await self.client.checkout_url(
            account_id, user_id, self.config.lemonsqueezy.variant_id
        )

    async def pack_offers(self, account_id: str, user_id: int) -> list[PackOffer]:
        """A checkout link per configured token pack (none without a link to give)."""
        ls = self.config.lemonsqueezy
        offers = []
        for variant, tokens in sorted(ls.packs.items(), key=lambda item: item[1]):
            if self.api_key:
                url = await self.client.checkout_url(account_id, user_id, variant)
            else:
                base = ls.pack_checkout_urls.get(variant, "")
                url = static_checkout_url(self.config, account_id, user_id, base) or ""
            if url:
                offers.append(PackOffer(tokens, url))
        return offers

    async def subscription(self, account_id: str) -> Subscription | None:
        """The subscription that grants access and ends last; else the one that ended last."""
        rows = await store.subscriptions_of(self.ledger.store.reader, account_id)
        if not rows:
            return None
        rules = rules_of(self.config)
        chosen = governing(rows, self.ledger.clock.now(), rules)
        row = chosen or max(rows, key=ends_last_key)
        return Subscription(
            row["subscription_id"],
            row["status"],
            chosen is not None,
            from_text(row["renews_at"]) if row["renews_at"] else None,
            from_text(row["ends_at"]) if row["ends_at"] else None,
            row["user_id"],
            bool(row["needs_payment_method"]),
        )

    async def manage_link(self, subscription: Subscription) -> ManageLink | None:
        """ "Manage subscription" (or "Update payment method" when past due): with an API
        key a freshly signed portal URL, fetched now because they expire after 24 hours;
        without one, the store's billing page."""
        label = (
            "Update payment method"
            if subscription.needs_payment_method
            else ("Manage subscription")
        )
        if self.api_key:
            urls = await self.client.subscription_urls(subscription.subscription_id)
            url = (
                urls.get("update_payment_method") if subscription.needs_payment_method else None
            ) or urls.get("customer_portal")
            return ManageLink(label, url) if url else None
        page = self.config.lemonsqueezy.billing_url or _billing_page(
            self.config.lemonsqueezy.checkout_url
        )
        return ManageLink(label, page) if page else None


def _billing_page(checkout_url: str) -> str | None:
    """A LemonSqueezy store serves its customers' billing page at /billing."""
    parts = urlsplit(checkout_url)
    if parts.scheme != "https" or not parts.netloc:
        return None
    return f"https://{parts.netloc}/billing"
