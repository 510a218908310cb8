"""The sidecar app on a real ledger (manual clock), driven by aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.billing import store as billing_store
from bot.billing.apply import Outcome, apply_event
from bot.billing.lemonsqueezy.webhook import parse_event
from bot.billing.service import rules_of
from bot.config import BillingSettings, Config, LemonSqueezySettings, Secrets, StorageSettings
from bot.http.sidecar import build_app
from ledger import Ledger, ManualClock
from tests.billing.payloads import (
    PACK_TOKENS,
    PACK_VARIANT,
    PRO_VARIANTS,
    SECRET,
    STORE_ID,
    encode,
    sign,
)


@pytest.fixture
def billing_clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.fixture
async def billing_ledger(tmp_path: Path, billing_clock: ManualClock) -> AsyncIterator[Ledger]:
    opened = await open_billing_ledger(tmp_path / "bot.db", billing_clock)
    try:
        yield opened
    finally:
        await opened.close()


async def open_billing_ledger(path: Path, clock: ManualClock) -> Ledger:
    """A ledger with the billing tables, as `bot.runtime.open_ledger` opens one."""
    opened = await Ledger.open(path, clock=clock)
    try:
        await billing_store.migrate(opened.store)
    except BaseException:
        await opened.close()
        raise
    return opened


def make_config(
    tmp_path: Path,
    *,
    secret: str | None = SECRET,
    test_mode: bool = False,
    refund_policy: str = "keep",
) -> Config:
    """The store and variants of tests/billing/payloads.py: monthly and annual Pro, a pack."""
    return Config(
        storage=StorageSettings(database=str(tmp_path / "bot.db"), data_dir=str(tmp_path / "data")),
        lemonsqueezy=LemonSqueezySettings(
            test_mode=test_mode,
            store_id=STORE_ID,
            pro_variant_ids=list(PRO_VARIANTS),
            packs={PACK_VARIANT: PACK_TOKENS},
        ),
        billing=BillingSettings(refund_policy=refund_policy),  # type: ignore[arg-type]
        secrets=Secrets(
            lemonsqueezy_webhook_secret=SecretStr(secret) if secret else None, _env_file=None
        ),
    )


async def deliver(ledger: Ledger, config: Config, payload: dict[str, Any] | bytes) -> Outcome:
    """An event applied as the sidecar applies it, without HTTP."""
    body = payload if isinstance(payload, bytes) else encode(payload)
    return await apply_event(ledger, parse_event(body), rules_of(config), body)


class Sidecar:
    def __init__(self, client: TestClient, notices: list[tuple[Any, ...]]) -> None:
        self.client = client
        self.notices = notices

    async def post(
        self, payload: dict[str, Any] | bytes, *, signature: str | None = None
    ) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else encode(payload)
        headers = {"Content-Type": "application/json"}
        headers["X-Signature"] = sign(body) if signature is None else signature
        if signature == "":
            del headers["X-Signature"]
        response = await self.client.post("/webhooks/lemonsqueezy", data=body, headers=headers)
        try:
            data = await response.json()
        except Exception:  # a 413 from aiohttp itself is plain text
            data = None
        return response.status, data


async def open_sidecar(
    config: Config, ledger: Ledger, fail_notify: bool = False
) -> tuple[TestClient, list[tuple[Any, ...]]]:
    notices: list[tuple[Any, ...]] = []

    async def notifier(account_id: str, user_id: str | None, plan: str, message: str) -> None:
        notices.append((account_id, user_id, plan))
        if fail_notify:
            raise RuntimeError("Discord is down")

    client = TestClient(TestServer(build_app(config, ledger, notifier)))
    await client.start_server()
    return client, notices


@pytest.fixture
async def sidecar(tmp_path: Path, billing_ledger: Ledger) -> AsyncIterator[Sidecar]:
    client, notices = await open_sidecar(make_config(tmp_path), billing_ledger)
    try:
        yield Sidecar(client, notices)
    finally:
        await client.close()
