"""The billing tables' first migration keeps what the ledger's old tables held."""

from __future__ import annotations

from pathlib import Path

from bot.billing import store
from ledger import Ledger

OLD_SUBSCRIPTION = (
    "INSERT INTO subscriptions (subscription_id, account_id, user_id, status, plan, renews_at,"
    " ends_at, portal_url, variant_id, test_mode, updated_at, received_at) VALUES"
    " ('101', 'guild:1', '7', 'paused', 'pro', NULL, NULL, NULL, '4', 0,"
    " '2026-11-24T10:00:00.000000Z', '2026-11-24T10:00:01.000000Z')"
)
OLD_EVENT = (
    "INSERT INTO webhook_events (event_name, object_id, subscription_id, account_id,"
    " body_sha256, outcome, detail, test_mode, received_at) VALUES"
    " ('subscription_payment_success', '501', '101', 'guild:1', 'abc', 'applied', '', 0,"
    " '2026-11-24T10:00:02.000000Z')"
)


async def test_old_rows_are_kept_with_their_provider_and_access(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "bot.db")  # the ledger's migrations: old tables
    try:
        await ledger.store.write(lambda conn: conn.execute(OLD_SUBSCRIPTION))
        await ledger.store.write(lambda conn: conn.execute(OLD_EVENT))
        await store.migrate(ledger.store)
        await store.migrate(ledger.store)  # applied once
        reader = ledger.store.reader
        row = await store.subscription(reader, "lemonsqueezy", "101")
        assert row is not None
        assert (row["account_id"], row["status"], row["access"]) == ("guild:1", "paused", "granted")
        event = await store.event_by_body(reader, "lemonsqueezy", "abc")
        assert event is not None and (event.outcome, event.body) == ("applied", None)
        # The invoice applied under the old tables stays applied once.
        assert await store.effect_applied(reader, "lemonsqueezy", "invoice:501")
    finally:
        await ledger.close()
