"""LemonSqueezy's API: checkout links and the customer portal's fresh URLs.

With an API key, a checkout is created through `POST /v1/checkouts` (JSON:API) carrying
the account id in `checkout_data.custom`, so the webhook knows which account paid.
Without one, the store's static checkout link carries it as `checkout[custom][...]`.
Any failure to reach LemonSqueezy is `BillingUnavailable`; nothing changes here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bot.config import Config
from bot.errors import BotError

log = logging.getLogger(__name__)

JSON_API = "application/vnd.api+json"


class BillingUnavailable(BotError):
    def __init__(self) -> None:
        super().__init__(
            "The payment service can't be reached right now; nothing was changed. "
            "Please try again in a few minutes."
        )


class BillingNotConfigured(BotError):
    def __init__(self) -> None:
        super().__init__("Upgrades are not set up on this bot yet; ask its operator.")


def static_checkout_url(
    config: Config, account_id: str, user_id: int | None = None, base: str | None = None
) -> str | None:
    """A share link (Pro's, or `base`: a pack's) carrying the account in its custom data."""
    base = config.lemonsqueezy.checkout_url if base is None else base
    if not base:
        return None
    query = {"checkout[custom][account_id]": account_id}
    if user_id is not None:
        query["checkout[custom][user_id]"] = str(user_id)
    return f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"


class LemonSqueezyClient:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    @property
    def api_key(self) -> str | None:
        key = self.config.secrets.lemonsqueezy_api_key
        return key.get_secret_value() if key else None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": JSON_API,
            "Content-Type": JSON_API,
        }
        url = self.config.lemonsqueezy.api_url.rstrip("/") + path
        try:
            async with self._client().request(method, url, json=body, headers=headers) as response:
                if response.status >= 300:
                    log.error("LemonSqueezy %s %s answered HTTP %d", method, path, response.status)
                    raise BillingUnavailable()
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.error("LemonSqueezy %s %s failed: %s", method, path, type(error).__name__)
            raise BillingUnavailable() from None
        if not isinstance(data, dict):
            raise BillingUnavailable()
        return data

    async def checkout_url(self, account_id: str, user_id: int, variant_id: str) -> str:
        """A checkout of `variant_id` for `account_id`, bought by `user_id` (needs a key)."""
        ls = self.config.lemonsqueezy
        if not ls.store_id or not variant_id:
            raise BillingNotConfigured()
        expires = datetime.now(UTC) + timedelta(minutes=ls.checkout_expires_minutes)
        body = {
            "data": {
                "type": "checkouts",
                "attributes": {
                    "checkout_data": {
                        "custom": {"account_id": account_id, "user_id": str(user_id)}
                    },
                    "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                    "test_mode": ls.test_mode,
                },
                "relationships": {
                    "store": {"data": {"type": "stores", "id": str(ls.store_id)}},
                    "variant": {"data": {"type": "variants", "id": str(variant_id)}},
                },
            }
        }
        data = await self._request("POST", "/v1/checkouts", body)
        url = _dig(data, "data", "attributes", "url")
        if not isinstance(url, str) or not url.startswith("http"):
            raise BillingUnavailable()
        return url

    async def subscription_urls(self, subscription_id: str) -> dict[str, str]:
        """The subscription's signed URLs as of now (they expire after 24 hours)."""
        data = await self._request("GET", f"/v1/subscriptions/{subscription_id}")
        urls = _dig(data, "data", "attributes", "urls")
        if not isinstance(urls, dict):
            return {}
        return {k: v for k, v in urls.items() if isinstance(v, str) and v.startswith("http")}


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
