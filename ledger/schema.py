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
    # 5: per-member caps inside a server's pool, per-member spending counters, the agent
    # each charge served, and the low-balance alerts already raised (once per period).
    """
    CREATE TABLE member_caps (
        account_id  TEXT NOT NULL REFERENCES usage_limits(account_id),
        scope       TEXT NOT NULL CHECK (scope IN ('member', 'role', 'default')),
        subject_id  TEXT NOT NULL,  -- the user id, the role id, or '' for the default
        tokens      INTEGER NOT NULL CHECK (tokens >= 0),
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (account_id, scope, subject_id)
    );

    -- One row per member of an account, like usage_limits: tokens_used is this member's
    -- charges in period_seq (reset when the account's period moves on), tokens_held the
    -- member's pending holds.
    CREATE TABLE member_spending (
        account_id  TEXT NOT NULL REFERENCES usage_limits(account_id),
        user_id     TEXT NOT NULL,
        period_seq  INTEGER NOT NULL,
        tokens_used INTEGER NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
        tokens_held INTEGER NOT NULL DEFAULT 0 CHECK (tokens_held >= 0),
        PRIMARY KEY (account_id, user_id)
    );
    INSERT INTO member_spending (account_id, user_id, period_seq, tokens_used, tokens_held)
    SELECT u.account_id, m.user_id, u.period_seq,
      COALESCE((SELECT SUM(t.tokens_used) FROM token_usage t WHERE t.account_id = u.account_id
        AND t.user_id = m.user_id AND t.period_seq = u.period_seq AND t.status = 'charged'), 0),
      COALESCE((SELECT SUM(h.amount) FROM holds h WHERE h.account_id = u.account_id
        AND h.user_id = m.user_id AND h.status = 'pending'), 0)
    FROM usage_limits u JOIN (
      SELECT account_id, user_id FROM token_usage WHERE user_id IS NOT NULL
        AND status = 'charged'
      UNION SELECT account_id, user_id FROM holds WHERE user_id IS NOT NULL
        AND status = 'pending'
    ) m ON m.account_id = u.account_id;

    ALTER TABLE holds ADD COLUMN agent TEXT;
    ALTER TABLE token_usage ADD COLUMN agent TEXT;

    CREATE TABLE balance_alerts (
        account_id   TEXT NOT NULL REFERENCES usage_limits(account_id),
        period_seq   INTEGER NOT NULL,
        threshold    INTEGER NOT NULL,  -- percent of the allowance left: 20, then 0
        remaining    INTEGER NOT NULL,
        instance_id  TEXT NOT NULL,     -- the process that raised it, and delivers it
        created_at   TEXT NOT NULL,
        PRIMARY KEY (account_id, period_seq, threshold)
    );
    """,
    # 6: the amount a hold set aside, on the audit row it produced, so that row stands for
    # the hold once the hold row is archived (ledger/archive.py).
    """
    ALTER TABLE token_usage ADD COLUMN hold_amount INTEGER;
    """,
    # 7: a call that outlived its hold (the sweeper expired it) is still charged when it
    # commits: its charge row names the expired hold here, once (issue 10, finding 1). The
    # hold keeps its own single 'expired' row in hold_id.
    """
    ALTER TABLE token_usage ADD COLUMN late_hold_id TEXT REFERENCES holds(hold_id);
    CREATE UNIQUE INDEX token_usage_late_hold ON token_usage(late_hold_id)
        WHERE late_hold_id IS NOT NULL;
    """,
    # 8: the period index covers the members' check too (their charges this period), so
    # the incremental verify reads index pages only.
    """
    DROP INDEX token_usage_period;
    CREATE INDEX token_usage_period
        ON token_usage(account_id, period_seq, status, user_id, operation_type, tokens_used);
    """,
    # 9 (storage): the leader of each once-only job among the processes of one database
    # (several `run` processes on several hosts: one syncs the slash commands).
    """
    CREATE TABLE leaders (
        role         TEXT PRIMARY KEY,
        instance_id  TEXT NOT NULL,
        lease_until  TEXT NOT NULL
    );
    """,
    # 10: each period's charges summed by member, agent, operation and day, written in
    # the commit's own transaction (Ledger._charge_in): /tokens and /usage read a few
    # counter rows instead of the period's audit rows, whatever the account's age or
    # traffic. subject is '' for a charge that served no member or no agent. Filled from
    # the log once, here; `verify --full` checks every counter against the log.
    """
    CREATE TABLE usage_totals (
        account_id  TEXT NOT NULL REFERENCES usage_limits(account_id),
        period_seq  INTEGER NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('member', 'agent', 'operation', 'day')),
        subject     TEXT NOT NULL,
        tokens      INTEGER NOT NULL CHECK (tokens >= 0),
        PRIMARY KEY (account_id, period_seq, kind, subject)
    );
    INSERT INTO usage_totals (account_id, period_seq, kind, subject, tokens)
    SELECT account_id, period_seq, kind, subject, SUM(tokens_used) FROM (
        SELECT account_id, period_seq, 'member' AS kind, COALESCE(user_id, '') AS subject,
            tokens_used FROM token_usage WHERE status = 'charged'
        UNION ALL SELECT account_id, period_seq, 'agent', COALESCE(agent, ''), tokens_used
            FROM token_usage WHERE status = 'charged'
        UNION ALL SELECT account_id, period_seq, 'operation', operation_type, tokens_used
            FROM token_usage WHERE status = 'charged'
        UNION ALL SELECT account_id, period_seq, 'day', substr(created_at, 1, 10),
            tokens_used FROM token_usage WHERE status = 'charged'
    ) AS charges GROUP BY account_id, period_seq, kind, subject;
    """,
]
