"""Numbered schema migrations, applied in order on open; `PRAGMA user_version` records
the last one applied. A migration is never edited once released: add a new one."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: accounts, holds, the audit log, the operators' journal, process leases.
    """
    CREATE TABLE usage_limits (
        account_id    TEXT PRIMARY KEY,
        plan_type     TEXT NOT NULL DEFAULT 'free',
        tokens_limit  INTEGER NOT NULL CHECK (tokens_limit >= 0),
        tokens_used   INTEGER NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
        tokens_held   INTEGER NOT NULL DEFAULT 0 CHECK (tokens_held >= 0),
        bonus_tokens  INTEGER NOT NULL DEFAULT 0 CHECK (bonus_tokens >= 0),
        period_start  TEXT NOT NULL,
        period_end    TEXT NOT NULL,
        -- boundaries are stepped from here (see ledger/periods.py)
        period_anchor TEXT NOT NULL,
        -- bumped at each new period; token_usage rows carry it so verify() can sum a period
        period_seq    INTEGER NOT NULL DEFAULT 1,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );

    CREATE TABLE instances (
        instance_id  TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        hostname     TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        lease_until  TEXT NOT NULL
    );

    -- A hold is pending until it is resolved exactly once: committed, released or expired.
    CREATE TABLE holds (
        hold_id        TEXT PRIMARY KEY,
        account_id     TEXT NOT NULL REFERENCES usage_limits(account_id),
        user_id        TEXT,
        guild_id       TEXT,
        operation_type TEXT NOT NULL,
        model_used     TEXT,
        amount         INTEGER NOT NULL CHECK (amount >= 0),
        status         TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'committed', 'released', 'expired')),
        charged        INTEGER,
        instance_id    TEXT NOT NULL,
        created_at     TEXT NOT NULL,
        expires_at     TEXT NOT NULL,
        resolved_at    TEXT,
        reason         TEXT
    );
    CREATE INDEX holds_pending ON holds(status, instance_id) WHERE status = 'pending';
    CREATE INDEX holds_account ON holds(account_id, status);

    -- Append-only. tokens_used is what the operation cost; bonus_delta is its change to
    -- bonus_tokens (negative when a charge drew on the bonus, positive for a grant).
    CREATE TABLE token_usage (
        id             INTEGER PRIMARY KEY,
        account_id     TEXT NOT NULL REFERENCES usage_limits(account_id),
        user_id        TEXT,
        guild_id       TEXT,
        operation_type TEXT NOT NULL,
        model_used     TEXT,
        tokens_used    INTEGER NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
        bonus_delta    INTEGER NOT NULL DEFAULT 0,
        status         TEXT NOT NULL,
        hold_id        TEXT UNIQUE REFERENCES holds(hold_id),
        period_seq     INTEGER NOT NULL,
        details        TEXT,
        created_at     TEXT NOT NULL
    );
    CREATE INDEX token_usage_account ON token_usage(account_id, id);

    CREATE TRIGGER token_usage_no_update BEFORE UPDATE ON token_usage
    BEGIN SELECT RAISE(ABORT, 'token_usage is append-only'); END;
    CREATE TRIGGER token_usage_no_delete BEFORE DELETE ON token_usage
    BEGIN SELECT RAISE(ABORT, 'token_usage is append-only'); END;

    -- What operators (and billing) did to an account, and why.
    CREATE TABLE journal (
        id          INTEGER PRIMARY KEY,
        account_id  TEXT NOT NULL REFERENCES usage_limits(account_id),
        action      TEXT NOT NULL,
        amount      INTEGER,
        old_value   TEXT,
        new_value   TEXT,
        actor       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX journal_account ON journal(account_id, id);
    """,
    # 2: LemonSqueezy subscriptions (latest snapshot each) and every webhook event received.
    """
    CREATE TABLE subscriptions (
        subscription_id TEXT PRIMARY KEY,
        account_id      TEXT,
        user_id         TEXT,
        status          TEXT NOT NULL,
        plan            TEXT NOT NULL,
        renews_at       TEXT,
        ends_at         TEXT,
        portal_url      TEXT,
        variant_id      TEXT,
        test_mode       INTEGER NOT NULL DEFAULT 0,
        updated_at      TEXT NOT NULL,  -- LemonSqueezy's own, to order snapshots
        received_at     TEXT NOT NULL
    );
    CREATE INDEX subscriptions_account ON subscriptions(account_id);

    CREATE TABLE webhook_events (
        id              INTEGER PRIMARY KEY,
        event_name      TEXT NOT NULL,
        object_id       TEXT,
        subscription_id TEXT,
        account_id      TEXT,
        body_sha256     TEXT NOT NULL UNIQUE,
        outcome         TEXT NOT NULL,
        detail          TEXT,
        test_mode       INTEGER NOT NULL DEFAULT 0,
        received_at     TEXT NOT NULL
    );
    CREATE INDEX webhook_events_object ON webhook_events(event_name, object_id);
    """,
    # 3: verify's checkpoint (ledger/verify.py): the last clean run, each account's sums
    # through it, and the ledger's own small state (the archive's watermark).
    """
    CREATE TABLE verify_state (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        through_usage_id INTEGER NOT NULL,  -- audit rows summed through this id
        holds_from       INTEGER NOT NULL,  -- holds below this rowid were resolved and checked
        mode             TEXT NOT NULL,     -- full | incremental
        finished_at      TEXT NOT NULL
    );
    CREATE TABLE verified_accounts (
        account_id  TEXT PRIMARY KEY,
        period_seq  INTEGER NOT NULL,
        charged     INTEGER NOT NULL,  -- allowance part of period_seq's charges
        bonus       INTEGER NOT NULL   -- sum of bonus_delta
    );
    CREATE TABLE ledger_state (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """,
    # 4: "usage by operation this period" (/tokens, /admin usage) read from the index
    # alone, so its cost follows the period's rows, not the account's age.
    """
    CREATE INDEX token_usage_period
        ON token_usage(account_id, period_seq, status, operation_type, tokens_used);
    """,
]
