"""A fake LemonSqueezy API on 127.0.0.1: records requests, answers checkouts and
subscriptions in JSON:API, and fails on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web


@dataclass
class LSRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeLemonSqueezy:
    def __init__(self) -> None:
        self.requests: list[LSRequest] = []
        self.fail_status: int | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/checkouts", self._checkout)
        app.router.add_get("/v1/subscriptions/{id}", self._subscription)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> web.Response | None:
        body = await request.json() if request.can_read_body else None
        self.requests.append(LSRequest(request.method, request.path, dict(request.headers), body))
        if self.fail_status:
            return web.json_response(
                {"errors": [{"detail": "fake failure"}]}, status=self.fail_status
            )
        return None

    async def _checkout(self, request: web.Request) -> web.Response:
        failed = await self._record(request)
        if failed:
            return failed
        return web.json_response(
            {
                "data": {
                    "type": "checkouts",
                    "id": "c-1",
                    "attributes": {"url": "https://shop.example/checkout/custom/c-1"},
                }
            },
            status=201,
            content_type="application/vnd.api+json",
        )

    async def _subscription(self, request: web.Request) -> web.Response:
        failed = await self._record(request)
        if failed:
            return failed
        sub = request.match_info["id"]
        portal = f"https://shop.example/billing?sub={sub}&expires=fresh"
        update = f"https://shop.example/billing/{sub}/update-payment-method?expires=fresh"
        urls = {"customer_portal": portal, "update_payment_method": update}
        return web.json_response(
            {
                "data": {
                    "type": "subscriptions",
                    "id": sub,
                    "attributes": {"status": "active", "urls": urls},
                }
            },
            content_type="application/vnd.api+json",
        )


@pytest.fixture
async def fake_lemonsqueezy() -> AsyncIterator[FakeLemonSqueezy]:
    fake = FakeLemonSqueezy()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
