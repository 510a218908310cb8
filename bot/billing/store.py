"""The billing tables and all their SQL: subscriptions (the newest snapshot of each),
every webhook event received (raw body, outcome and reason), and token-pack orders.

They record the provider, so a second provider shares them. Their migrations are
numbered on their own (tracked in `billing_schema`); the first one rebuilds the
`subscriptions` and `webhook_events` tables that the ledger's migration 2 made, when
LemonSqueezy lived in the ledger, keeping every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.storage import Connection, Store

BILLING_MIGRATIONS: list[str] = [
    # 1: the provider in every key, raw bodies kept, access instead of plan, pack orders.
    """
    DROP INDEX IF EXISTS subscriptions_account;
    DROP INDEX IF EXISTS webhook_events_object;
    ALTER TABLE subscriptions RENAME TO subscriptions_v1;
    ALTER TABLE webhook_events RENAME TO webhook_events_v1;

    CREATE TABLE subscriptions (
        provider         TEXT NOT NULL,
        subscription_id  TEXT NOT NULL,
        account_id       TEXT,
        user_id          TEXT,  -- the buyer, from the checkout's custom data
        status           TEXT NOT NULL,  -- the provider's word
        access           TEXT NOT NULL
                         CHECK (access IN ('granted', 'until_end', 'none', 'unknown')),
        renews_at        TEXT,
        ends_at          TEXT,
        variant_id       TEXT,
        product_id       TEXT,
        order_id         TEXT,
        portal_url       TEXT,
        needs_payment_method INTEGER NOT NULL DEFAULT 0,
        last_invoice_id  TEXT,  -- the paid invoice that started its current cycle
        refunded_invoice TEXT,  -- set when that invoice's refund ended Pro (policy downgrade)
        test_mode        INTEGER NOT NULL DEFAULT 0,
        updated_at       TEXT NOT NULL,  -- the provider's own, to order snapshots
        received_at      TEXT NOT NULL,
        PRIMARY KEY (provider, subscription_id)
    );
    CREATE INDEX subscriptions_account ON subscriptions(account_id);
    INSERT INTO subscriptions (provider, subscription_id, account_id, user_id, status, access,
        renews_at, ends_at, variant_id, portal_url, test_mode, updated_at, received_at)
    SELECT 'lemonsqueezy', subscription_id, account_id, user_id, status,
        CASE WHEN status IN ('active', 'on_trial', 'past_due') THEN 'granted'
             WHEN status = 'cancelled' THEN 'until_end'
             WHEN status = 'paused' AND plan = 'pro' THEN 'granted'
             WHEN status IN ('expired', 'unpaid', 'paused') THEN 'none'
             ELSE 'unknown' END,
        renews_at, ends_at, variant_id, portal_url, test_mode, updated_at, received_at
    FROM subscriptions_v1;
    DROP TABLE subscriptions_v1;

    CREATE TABLE webhook_events (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        provider        TEXT NOT NULL,
        event_name      TEXT NOT NULL,
        object_id       TEXT,
        subscription_id TEXT,
        account_id      TEXT,
        body_sha256     TEXT NOT NULL,
        body            BLOB,  -- the signed body as received (NULL for events of before)
        outcome         TEXT NOT NULL,
        detail          TEXT,
        effect_key      TEXT,  -- an effect applied at most once (an invoice, an order, a refund)
        test_mode       INTEGER NOT NULL DEFAULT 0,
        received_at     TEXT NOT NULL,
        UNIQUE (provider, body_sha256)
    );
    CREATE INDEX webhook_events_account ON webhook_events(account_id, id);
    CREATE INDEX webhook_events_effect ON webhook_events(provider, effect_key);
    INSERT INTO webhook_events (provider, event_name, object_id, subscription_id, account_id,
        body_sha256, outcome, detail, effect_key, test_mode, received_at)
    SELECT 'lemonsqueezy', event_name, object_id, subscription_id, account_id, body_sha256,
        outcome, detail,
        CASE WHEN outcome = 'applied' AND event_name = 'subscription_payment_success'
             THEN 'invoice:' || object_id END,
        test_mode, received_at
    FROM webhook_events_v1 ORDER BY id;
    DROP TABLE webhook_events_v1;

    CREATE TABLE orders (
        provider       TEXT NOT NULL,
        order_id       TEXT NOT NULL,
        account_id     TEXT NOT NULL,
        variant_id     TEXT NOT NULL,
        tokens         INTEGER NOT NULL CHECK (tokens > 0),  -- granted when it was paid
        tokens_revoked INTEGER NOT NULL DEFAULT 0,  -- asked back by refunds so far
        total          INTEGER NOT NULL,
        created_at     TEXT NOT NULL,
        PRIMARY KEY (provider, order_id)
    );
    """,
]

# Outcomes that changed nothing for a reason that may pass (test mode was off; a field
# missing, once the code reads it): the same body received again is looked at again. An
# event ignored for its variant is not: `billing replay` applies it once configured.
RETRYABLE = ("invalid", "test_mode_ignored")


async def migrate(store: Store) -> None:
    await store.migrate("billing_schema", BILLING_MIGRATIONS)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    provider: str
    event_name: str
    object_id: str | None
    subscription_id: str | None
    account_id: str | None
    outcome: str
    detail: str | None
    received_at: str
    body: bytes | None


def _event(row: Any) -> StoredEvent:
    body = row["body"]
    return StoredEvent(
        row["id"],
        row["provider"],
        row["event_name"],
        row["object_id"],
        row["subscription_id"],
        row["account_id"],
        row["outcome"],
        row["detail"],
        row["received_at"],
        bytes(body) if body is not None else None,
    )


async def event_by_body(conn: Connection, provider: str, body_sha256: str) -> StoredEvent | None:
    rows = await conn.execute_fetchall(
        "SELECT * FROM webhook_events WHERE provider = ? AND body_sha256 = ?",
        (provider, body_sha256),
    )
    return _event(rows[0]) if rows else None


async def event_by_id(conn: Connection, event_id: int) -> StoredEvent | None:
    rows = await conn.execute_fetchall("SELECT * FROM webhook_events WHERE id = ?", (event_id,))
    return _event(rows[0]) if rows else None


async def events(conn: Connection, account_id: str | None, limit: int) -> list[StoredEvent]:
    where, args = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
    rows = await conn.execute_fetchall(
        f"SELECT * FROM webhook_events {where} ORDER BY id DESC LIMIT ?", (*args, limit)
    )
    return [_event(r) for r in rows]


async def record_event(
    conn: Connection, values: dict[str, Any], existing: StoredEvent | None
) -> None:
    """Insert the event's row, or (a retryable event received again) update it."""
    if existing is None:
        await conn.execute(
            f"INSERT INTO webhook_events ({', '.join(values)})"
            f" VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()),
        )
        return
    await conn.execute(
        "UPDATE webhook_events SET account_id = ?, outcome = ?, detail = ?, effect_key = ?,"
        " subscription_id = ? WHERE id = ?",
        (
            values["account_id"],
            values["outcome"],
            values["detail"],
            values["effect_key"],
            values["subscription_id"],
            existing.id,
        ),
    )


# The detail of a paid invoice that arrived before its subscription's first snapshot.
NOT_KNOWN_YET = "subscription not known yet"


async def invoice_waiting(conn: Connection, provider: str, subscription_id: str) -> str | None:
    """The newest paid invoice recorded before the subscription was known."""
    rows = await conn.execute_fetchall(
        "SELECT object_id FROM webhook_events WHERE provider = ? AND subscription_id = ?"
        " AND outcome = 'recorded' AND detail = ? ORDER BY id DESC LIMIT 1",
        (provider, subscription_id, NOT_KNOWN_YET),
    )
    return rows[0][0] if rows else None


async def effect_applied(conn: Connection, provider: str, key: str) -> bool:
    rows = await conn.execute_fetchall(
        "SELECT 1 FROM webhook_events WHERE provider = ? AND effect_key = ? LIMIT 1",
        (provider, key),
    )
    return bool(rows)


async def subscription(
    conn: Connection, provider: str, subscription_id: str
) -> dict[str, Any] | None:
    rows = await conn.execute_fetchall(
        "SELECT * FROM subscriptions WHERE provider = ? AND subscription_id = ?",
        (provider, subscription_id),
    )
    return dict(rows[0]) if rows else None


async def subscription_by_order(
    conn: Connection, provider: str, order_id: str
) -> dict[str, Any] | None:
    rows = await conn.execute_fetchall(
        "SELECT * FROM subscriptions WHERE provider = ? AND order_id = ?", (provider, order_id)
    )
    return dict(rows[0]) if rows else None


async def subscriptions_of(conn: Connection, account_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute_fetchall(
        "SELECT * FROM subscriptions WHERE account_id = ? ORDER BY provider, subscription_id",
        (account_id,),
    )
    return [dict(r) for r in rows]


async def save_subscription(conn: Connection, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    updates = ", ".join(
        f"{c} = excluded.{c}" for c in row if c not in ("provider", "subscription_id")
    )
    await conn.execute(
        f"INSERT INTO subscriptions ({columns}) VALUES ({', '.join('?' * len(row))})"
        f" ON CONFLICT (provider, subscription_id) DO UPDATE SET {updates}",
        tuple(row.values()),
    )


async def order(conn: Connection, provider: str, order_id: str) -> dict[str, Any] | None:
    rows = await conn.execute_fetchall(
        "SELECT * FROM orders WHERE provider = ? AND order_id = ?", (provider, order_id)
    )
    return dict(rows[0]) if rows else None


async def insert_order(conn: Connection, row: dict[str, Any]) -> bool:
    """False if the order is already there (granted once, whatever the body)."""
    inserted = await conn.execute_fetchall(
        f"INSERT INTO orders ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        " ON CONFLICT (provider, order_id) DO NOTHING RETURNING order_id",
        tuple(row.values()),
    )
    return bool(inserted)


async def add_revoked(conn: Connection, provider: str, order_id: str, tokens: int) -> None:
    await conn.execute(
        "UPDATE orders SET tokens_revoked = tokens_revoked + ? WHERE provider = ? AND order_id = ?",
        (tokens, provider, order_id),
    )
