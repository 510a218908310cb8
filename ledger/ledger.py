"""The token ledger: accounts with a monthly allowance, bonus tokens, and holds.

Invariants (checked by `verify()` and by the stateful tests after every step):
- usage_limits.tokens_used = the allowance part of the current period's charges;
- usage_limits.tokens_held = the sum of the account's pending holds;
- usage_limits.bonus_tokens = the sum of token_usage.bonus_delta (grants, revokes, draws);
- no counter is negative; available = limit - used - held + bonus, shown as 0 if below;
- a hold moves from pending to exactly one of committed, released or expired, once,
  and leaves exactly one token_usage row when it does;
- each usage_totals counter = its period's charges of one member, agent, operation or
  day (ledger/totals.py; checked by `verify(full=True)`).

A reserve is one conditional UPDATE inside the writer's transaction, so two callers can
never both spend the last tokens. Periods roll over inside the next write that touches
the account, once per boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ledger import members, queries, totals
from ledger import verify as verifier
from ledger.accounts import Plan, available, check_account_id, check_amount, split_charge
from ledger.alerts import alerts_in
from ledger.clock import Clock, SystemClock, from_text, to_text
from ledger.errors import (
    HoldNotFound,
    InsufficientTokens,
    InvalidAccount,
    MemberCapReached,
    UnknownPlan,
)
from ledger.leases import host_key, process_alive
from ledger.members import Cap, MemberSpending
from ledger.periods import add_months, period_containing
from ledger.records import (
    Adjustment,
    Balance,
    BalanceAlert,
    CompactReport,
    Hold,
    Resolution,
    SweepReport,
    UsageEntry,
    Violation,
)
from ledger.storage import Connection, Store, lock_rows, open_store

log = logging.getLogger(__name__)

DEFAULT_PLANS: dict[str, Plan] = {
    "free": Plan("free", 250_000, 3),
    "pro": Plan("pro", 10_000_000, 0),
}

# Maintenance archives this many batches of holds per round, so a backlog is worked off
# over several rounds instead of in one long stretch of writer time.
ARCHIVE_BATCHES_PER_ROUND = 5
IDLE_CHECKPOINT_SECONDS = 5.0
LONG_READ_SECONDS = 1.0

# The instances this process has open: any other instance recorded with our pid on this
# host is a dead process whose pid was reused by us.
_OPENED_HERE: set[str] = set()


class Ledger:
    def __init__(
        self,
        store: Store,
        plans: Mapping[str, Plan],
        clock: Clock,
        *,
        hold_ttl_seconds: float,
        lease_seconds: float,
        instance_id: str,
    ) -> None:
        self.store = store
        self.plans = dict(plans)
        self.clock = clock
        self.hold_ttl = timedelta(seconds=hold_ttl_seconds)
        self.lease = timedelta(seconds=lease_seconds)
        self.instance_id = instance_id
        self._maintenance: asyncio.Task[None] | None = None
        self._roles: set[str] = set()  # the once-only jobs this instance leads
        self._checkpointed_at = 0.0
        # A stall of half a renewal interval is one a live process may not have renewed
        # through: leases are not judged until a whole lease has passed since.
        store.stall_seconds = lease_seconds / 6

    @classmethod
    async def open(
        cls,
        path: str | Path,
        plans: Mapping[str, Plan] | None = None,
        *,
        clock: Clock | None = None,
        hold_ttl_seconds: float = 900,
        lease_seconds: float = 30,
        kind: str = "bot",
        secure_delete: bool = False,
    ) -> Ledger:
        store = await open_store(path, secure_delete=secure_delete)
        ledger = cls(
            store,
            plans or DEFAULT_PLANS,
            clock or SystemClock(),
            hold_ttl_seconds=hold_ttl_seconds,
            lease_seconds=lease_seconds,
            instance_id=uuid.uuid4().hex,
        )
        try:
            await ledger._register(kind)
        except BaseException:
            await store.close()
            raise
        return ledger

    async def close(self) -> None:
        """Stop maintenance, expire this instance's unresolved holds, leave the lease table."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        _OPENED_HERE.discard(self.instance_id)
        try:
            await self.store.write(self._retire_op)
        finally:
            await self.store.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def plan(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            raise UnknownPlan(f"unknown plan {name!r}; known: {', '.join(self.plans)}") from None

    # ---- accounts and periods -------------------------------------------------------

    async def _account(self, conn: Connection, account_id: str, now: datetime) -> dict[str, Any]:
        """The account row, created on first use and rolled over if its period ended."""
        # Locked on PostgreSQL: every write that reads the row writes it from what it read.
        select = "SELECT * FROM usage_limits WHERE account_id = ?" + lock_rows(conn)
        rows = list(await conn.execute_fetchall(select, (account_id,)))
        if not rows:
            free = self.plan("free")
            row: dict[str, Any] = {
                "account_id": account_id,
                "plan_type": free.name,
                "tokens_limit": free.monthly_tokens,
                "tokens_used": 0,
                "tokens_held": 0,
                "bonus_tokens": 0,
                "period_start": to_text(now),
                "period_end": to_text(add_months(now, 1)),
                "period_anchor": to_text(now),
                "period_seq": 1,
                "created_at": to_text(now),
                "updated_at": to_text(now),
            }
            created = await conn.execute_fetchall(
                f"INSERT INTO usage_limits ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
                " ON CONFLICT (account_id) DO NOTHING RETURNING account_id",
                tuple(row.values()),
            )
            if created:
                return row
            # Another process created it since our read (only on PostgreSQL).
            rows = list(await conn.execute_fetchall(select, (account_id,)))
        row = dict(rows[0])
        if now >= from_text(row["period_end"]):
            start, end = period_containing(from_text(row["period_anchor"]), now)
            await conn.execute(
                "UPDATE usage_limits SET tokens_used = 0, period_start = ?, period_end = ?,"
                " period_seq = period_seq + 1, updated_at = ? WHERE account_id = ?",
                (to_text(start), to_text(end), to_text(now), account_id),
            )
            await self._journal(
                conn,
                account_id,
                "period_reset",
                row["tokens_used"],
                row["period_end"],
                to_text(end),
                "ledger",
                "the period ended",
                now,
            )
            row.update(
                tokens_used=0,
                period_start=to_text(start),
                period_end=to_text(end),
                period_seq=row["period_seq"] + 1,
            )
            await self._audit(
                conn,
                row,
                "period_reset",
                "ledger",
                f"the period ended; next to {to_text(end)}",
                now,
            )
        return row

    async def _audit(
        self,
        conn: Connection,
        row: dict[str, Any],
        operation: str,
        actor: str,
        details: str,
        now: datetime,
    ) -> None:
        """A row of the audit trail that moves no tokens (a plan change, a fresh period,
        a refund), so that `history` and `export` show it beside the charges."""
        await conn.execute(
            "INSERT INTO token_usage (account_id, user_id, operation_type, tokens_used,"
            " bonus_delta, status, period_seq, details, created_at)"
            " VALUES (?, ?, ?, 0, 0, 'applied', ?, ?, ?)",
            (row["account_id"], actor, operation, row["period_seq"], details, to_text(now)),
        )

    async def note_in(
        self, conn: Connection, account_id: str, operation: str, actor: str, details: str
    ) -> None:
        """An audit row of `operation` (billing's refunds), inside the caller's transaction."""
        now = self.clock.now()
        row = await self._account(conn, account_id, now)
        await self._audit(conn, row, operation, actor, details, now)

    async def _journal(
        self,
        conn: Connection,
        account_id: str,
        action: str,
        amount: int | None,
        old: str | None,
        new: str | None,
        actor: str,
        reason: str,
        now: datetime,
    ) -> None:
        await conn.execute(
            "INSERT INTO journal (account_id, action, amount, old_value, new_value, actor,"
            " reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (account_id, action, amount, old, new, actor, reason, to_text(now)),
        )

    # ---- holds: reserve, commit, release ----------------------------------------------

    async def reserve(
        self,
        account_id: str,
        amount: int,
        operation: str,
        user_id: str | int | None = None,
        guild_id: str | int | None = None,
        model: str | None = None,
        *,
        roles: Sequence[str | int] = (),
        agent: str | None = None,
    ) -> Hold:
        """Set `amount` aside, or raise InsufficientTokens (the pool) or MemberCapReached
        (the member's cap; `roles` are theirs, highest first) and change nothing else."""
        check_account_id(account_id)
        check_amount(amount)
        user = None if user_id is None else str(user_id)
        guild = None if guild_id is None else str(guild_id)
        role_ids = [str(r) for r in roles]
        hold_id = uuid.uuid4().hex

        async def op(conn: Connection) -> Hold:
            now = self.clock.now()
            row = await self._account(conn, account_id, now)
            if user is not None:
                await self._hold_member(conn, row, user, role_ids, amount)
            updated = await conn.execute_fetchall(
                "UPDATE usage_limits SET tokens_held = tokens_held + :amount, updated_at = :now"
                " WHERE account_id = :account"
                " AND tokens_limit - tokens_used - tokens_held + bonus_tokens >= :amount"
                " RETURNING tokens_limit, tokens_used, tokens_held, bonus_tokens",
                {"amount": amount, "now": to_text(now), "account": account_id},
            )
            if not updated:
                if user is not None:
                    await members.unhold_in(conn, account_id, user, amount)
                raise InsufficientTokens(
                    amount,
                    available(
                        row["tokens_limit"],
                        row["tokens_used"],
                        row["tokens_held"],
                        row["bonus_tokens"],
                    ),
                    row["plan_type"],
                )
            await conn.execute(
                "INSERT INTO holds (hold_id, account_id, user_id, guild_id, operation_type,"
                " model_used, amount, instance_id, created_at, expires_at, agent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hold_id,
                    account_id,
                    user,
                    guild,
                    operation,
                    model,
                    amount,
                    self.instance_id,
                    to_text(now),
                    to_text(now + self.hold_ttl),
                    agent,
                ),
            )
            after = updated[0]
            return Hold(
                hold_id, account_id, amount, operation, model, user, guild, available(*after)
            )

        return await self.store.write(op)

    async def _hold_member(
        self,
        conn: Connection,
        row: dict[str, Any],
        user: str,
        roles: list[str],
        amount: int,
    ) -> None:
        account_id = row["account_id"]
        cap = await members.cap_for(conn, account_id, user, roles)
        seq = row["period_seq"]
        if await members.hold_in(
            conn, account_id, user, seq, amount, None if cap is None else cap.tokens
        ):
            return
        assert cap is not None  # without a cap the hold is always admitted
        used, held = await members.spending_row(conn, account_id, user, seq)
        raise MemberCapReached(
            amount, used + held, cap.tokens, cap.scope, cap.subject_id, from_text(row["period_end"])
        )

    async def commit(self, hold: Hold | str, actual: int, details: str | None = None) -> Resolution:
        """Charge `actual` for a pending hold (in full, even above the hold) and free the rest."""
        check_amount(actual, allow_zero=True)
        return await self.store.write(
            lambda conn: self._resolve(conn, _hold_id(hold), "committed", actual, details)
        )

    async def commit_in(
        self, conn: Connection, hold: Hold | str, actual: int, details: str | None = None
    ) -> Resolution:
        """`commit` inside a write transaction the caller already holds, so the charge and
        what it paid for (a stored avatar, a stored document) commit together or not at all."""
        check_amount(actual, allow_zero=True)
        return await self._resolve(conn, _hold_id(hold), "committed", actual, details)

    async def extend(self, hold: Hold | str) -> bool:
        """Push a pending hold's expiry to a time to live from now, because its call is
        making progress (a long upload between two batches). False if no longer pending."""

        async def op(conn: Connection) -> bool:
            rows = await conn.execute_fetchall(
                "UPDATE holds SET expires_at = ? WHERE hold_id = ? AND status = 'pending'"
                " RETURNING 1",
                (to_text(self.clock.now() + self.hold_ttl), _hold_id(hold)),
            )
            return bool(rows)

        return await self.store.write(op)

    async def release(self, hold: Hold | str, reason: str | None = None) -> Resolution:
        """Free a pending hold and charge nothing."""
        return await self.store.write(
            lambda conn: self._resolve(conn, _hold_id(hold), "released", 0, reason)
        )

    async def _resolve(
        self,
        conn: Connection,
        hold_id: str,
        status: str,
        actual: int,
        details: str | None,
    ) -> Resolution:
        now = self.clock.now()
        claimed = await conn.execute_fetchall(
            "UPDATE holds SET status = ?, charged = ?, resolved_at = ?, reason = ?"
            " WHERE hold_id = ? AND status = 'pending'"
            " RETURNING account_id, user_id, guild_id, operation_type, model_used, amount, agent",
            (status, actual, to_text(now), details, hold_id),
        )
        if not claimed:
            if status == "committed":
                late = await self._charge_late(conn, hold_id, actual, details, now)
                if late is not None:
                    return late
            return await self._earlier_resolution(conn, hold_id, now)
        hold = claimed[0]
        charged = actual if status == "committed" else 0
        excess = max(0, actual - hold["amount"])
        return await self._charge_in(
            conn,
            hold,
            hold_id,
            status,
            charged,
            hold["amount"],
            "charged" if status == "committed" else status,
            _excess_note(details, excess),
            excess,
            now,
        )

    async def _charge_late(
        self,
        conn: Connection,
        hold_id: str,
        actual: int,
        details: str | None,
        now: datetime,
    ) -> Resolution | None:
        """A commit on a hold the sweeper expired while its call still ran (a process
        paused, a database busy past the lease, a call past the hold's time to live). The
        work was done and is delivered, so it is charged in full, once: a charge row of
        its own (the hold keeps its one 'expired' row) naming the hold in late_hold_id."""
        rows = await conn.execute_fetchall(
            "SELECT account_id, user_id, guild_id, operation_type, model_used, agent, reason"
            " FROM holds h WHERE hold_id = ? AND status = 'expired' AND NOT EXISTS"
            " (SELECT 1 FROM token_usage t WHERE t.late_hold_id = h.hold_id)" + lock_rows(conn),
            (hold_id,),
        )
        if not rows:
            return None
        hold = rows[0]
        log.warning(
            "hold %s on %s had expired (%s) before its commit; charging %d late",
            hold_id,
            hold["account_id"],
            hold["reason"],
            actual,
        )
        note = f"charged after its hold expired ({hold['reason']})"
        return await self._charge_in(
            conn,
            hold,
            hold_id,
            "committed",
            actual,
            0,  # the expiry already freed what the hold set aside
            "charged",
            f"{note}; {details}" if details else note,
            actual,
            now,
            late=True,
        )

    async def _charge_in(
        self,
        conn: Connection,
        hold: Any,
        hold_id: str,
        status: str,
        actual: int,
        freed: int,
        row_status: str,
        details: str | None,
        excess: int,
        now: datetime,
        *,
        late: bool = False,
    ) -> Resolution:
        """Charge `actual` and free `freed` held tokens on the hold's account, with the
        audit row (and the member's counters and balance alerts) that go with it."""
        account_id = hold["account_id"]
        row = await self._account(conn, account_id, now)
        from_bonus = split_charge(
            actual, row["tokens_limit"], row["tokens_used"], row["bonus_tokens"]
        )
        used = row["tokens_used"] + actual - from_bonus
        held = row["tokens_held"] - freed
        bonus = row["bonus_tokens"] - from_bonus
        stamp = to_text(now)
        await conn.execute(
            "UPDATE usage_limits SET tokens_used = ?, tokens_held = ?, bonus_tokens = ?,"
            " updated_at = ? WHERE account_id = ?",
            (used, held, bonus, stamp, account_id),
        )
        await conn.execute(
            "INSERT INTO token_usage (account_id, user_id, guild_id, operation_type,"
            " model_used, tokens_used, bonus_delta, status, hold_id, period_seq, details,"
            " created_at, agent, hold_amount, late_hold_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account_id,
                hold["user_id"],
                hold["guild_id"],
                hold["operation_type"],
                hold["model_used"],
                actual,
                -from_bonus,
                row_status,
                None if late else hold_id,
                row["period_seq"],
                details,
                stamp,
                hold["agent"],
                None if late else freed,
                hold_id if late else None,
            ),
        )
        if row_status == "charged":
            await totals.add_in(
                conn,
                account_id,
                row["period_seq"],
                user_id=hold["user_id"],
                agent=hold["agent"],
                operation=hold["operation_type"],
                created_at=stamp,
                tokens=actual,
            )
        if hold["user_id"] is not None:
            await members.settle_in(
                conn, account_id, hold["user_id"], row["period_seq"], freed, actual
            )
        alerts: tuple[BalanceAlert, ...] = ()
        if actual:
            alerts = await alerts_in(
                conn, {**row, "tokens_used": used, "bonus_tokens": bonus}, self.instance_id, now
            )
        if excess and not late:
            log.warning("hold %s on %s was exceeded by %d tokens", hold_id, account_id, excess)
        return Resolution(
            hold_id,
            account_id,
            status,
            actual,
            excess,
            available(row["tokens_limit"], used, held, bonus),
            True,
            alerts,
        )

    async def _earlier_resolution(
        self, conn: Connection, hold_id: str, now: datetime
    ) -> Resolution:
        rows = await conn.execute_fetchall(
            "SELECT h.status, h.amount, h.charged, u.* FROM holds h"
            " JOIN usage_limits u USING (account_id) WHERE h.hold_id = ?",
            (hold_id,),
        )
        if not rows:  # archived (ledger/archive.py): its audit row is its record
            rows = await conn.execute_fetchall(
                "SELECT CASE t.status WHEN 'charged' THEN 'committed' ELSE t.status END"
                " AS status, COALESCE(t.hold_amount, t.tokens_used) AS amount,"
                " t.tokens_used AS charged, u.* FROM token_usage t"
                " JOIN usage_limits u USING (account_id) WHERE t.hold_id = ?",
                (hold_id,),
            )
        if not rows:
            raise HoldNotFound(f"no hold {hold_id!r}")
        r = dict(rows[0])
        charged = r["charged"] or 0
        # As balance() shows it: a period that has ended counts as rolled over.
        shown = queries.balance_from_row(r, now)
        return Resolution(
            hold_id,
            r["account_id"],
            r["status"],
            charged,
            max(0, charged - r["amount"]),
            shown.available,
            False,
        )

    async def record(
        self,
        account_id: str,
        operation: str,
        user_id: str | int | None = None,
        guild_id: str | int | None = None,
        model: str | None = None,
        details: str | None = None,
    ) -> None:
        """Append a free operation (an avatar upload) to the audit log."""
        check_account_id(account_id)

        async def op(conn: Connection) -> None:
            now = self.clock.now()
            row = await self._account(conn, account_id, now)
            await conn.execute(
                "INSERT INTO token_usage (account_id, user_id, guild_id, operation_type,"
                " model_used, tokens_used, status, period_seq, details, created_at)"
                " VALUES (?, ?, ?, ?, ?, 0, 'free', ?, ?, ?)",
                (
                    account_id,
                    _text(user_id),
                    _text(guild_id),
                    operation,
                    model,
                    row["period_seq"],
                    details,
                    to_text(now),
                ),
            )

        await self.store.write(op)

    # ---- operators: grants, revokes, plans --------------------------------------------

    async def grant(
        self, account_id: str, amount: int, actor: str, reason: str, *, maximum: int | None = None
    ) -> Adjustment:
        """Add bonus tokens; they never reset."""
        check_account_id(account_id)
        check_amount(amount, maximum=maximum)
        return await self.store.write(
            lambda conn: self._adjust(conn, account_id, amount, amount, actor, reason, "grant")
        )

    async def grant_in(
        self,
        conn: Connection,
        account_id: str,
        amount: int,
        actor: str,
        reason: str,
        operation: str = "grant",
    ) -> Adjustment:
        """`grant` inside the caller's transaction, recorded as `operation` (a token pack)."""
        check_amount(amount)
        return await self._adjust(conn, account_id, amount, amount, actor, reason, operation)

    async def revoke_in(
        self,
        conn: Connection,
        account_id: str,
        amount: int,
        actor: str,
        reason: str,
        operation: str = "revoke",
    ) -> Adjustment:
        """`revoke` inside the caller's transaction: at most the bonus left, never below 0."""
        check_amount(amount)
        row = await self._account(conn, account_id, self.clock.now())
        taken = min(amount, row["bonus_tokens"])
        return await self._adjust(conn, account_id, amount, -taken, actor, reason, operation)

    async def revoke(
        self, account_id: str, amount: int, actor: str, reason: str, *, maximum: int | None = None
    ) -> Adjustment:
        """Take back bonus tokens, at most what is left of them (never below 0)."""
        check_account_id(account_id)
        check_amount(amount, maximum=maximum)

        return await self.store.write(
            lambda conn: self.revoke_in(conn, account_id, amount, actor, reason)
        )

    async def _adjust(
        self,
        conn: Connection,
        account_id: str,
        requested: int,
        delta: int,
        actor: str,
        reason: str,
        action: str,
    ) -> Adjustment:
        now = self.clock.now()
        row = await self._account(conn, account_id, now)
        bonus = row["bonus_tokens"] + delta
        await conn.execute(
            "UPDATE usage_limits SET bonus_tokens = ?, updated_at = ? WHERE account_id = ?",
            (bonus, to_text(now), account_id),
        )
        await conn.execute(
            "INSERT INTO token_usage (account_id, user_id, operation_type, tokens_used,"
            " bonus_delta, status, period_seq, details, created_at)"
            " VALUES (?, ?, ?, 0, ?, 'applied', ?, ?, ?)",
            (account_id, actor, action, delta, row["period_seq"], reason, to_text(now)),
        )
        await self._journal(
            conn,
            account_id,
            action,
            abs(delta),
            str(row["bonus_tokens"]),
            str(bonus),
            actor,
            reason,
            now,
        )
        return Adjustment(
            account_id,
            requested,
            abs(delta),
            bonus,
            available(row["tokens_limit"], row["tokens_used"], row["tokens_held"], bonus),
        )

    async def set_plan(
        self,
        account_id: str,
        plan: str,
        period_end: datetime | None = None,
        *,
        actor: str,
        reason: str,
    ) -> Balance:
        """Move an account to `plan`. With `period_end`, a fresh period starts now (usage
        back to 0) and later periods step monthly from `period_end`; without it, the
        current period and its usage are kept and only the allowance changes."""
        check_account_id(account_id)
        self.plan(plan)
        return await self.store.write(
            lambda conn: self.set_plan_in(conn, account_id, plan, period_end, actor, reason)
        )

    async def set_plan_in(
        self,
        conn: Connection,
        account_id: str,
        plan: str,
        period_end: datetime | None,
        actor: str,
        reason: str,
    ) -> Balance:
        """`set_plan` inside a write transaction the caller already holds (billing uses it
        so that an event's plan change and its record commit together)."""
        now = self.clock.now()
        period = None
        if period_end is not None and period_end > now:
            period = (now, period_end, period_end)
        return await self.enter_period_in(conn, account_id, plan, period, actor, reason)

    async def enter_period_in(
        self,
        conn: Connection,
        account_id: str,
        plan: str,
        period: tuple[datetime, datetime, datetime] | None,
        actor: str,
        reason: str,
    ) -> Balance:
        """Put the account on `plan` and, with `period` = (start, end, anchor), in that
        period: a period other than the current one is fresh (usage back to 0) and later
        ones step monthly from `anchor`; the same period only takes the new anchor.
        Without `period` the current period and its usage are kept. Each plan change and
        each fresh period is a row of the audit trail, with its actor and reason."""
        target = self.plan(plan)
        now = self.clock.now()
        row = await self._account(conn, account_id, now)
        fresh = False
        if period is not None:
            start, end, anchor = (to_text(t) for t in period)
            fresh = (start, end) != (row["period_start"], row["period_end"])
            if fresh:
                row.update(
                    tokens_used=0,
                    period_start=start,
                    period_end=end,
                    period_seq=row["period_seq"] + 1,
                )
            row.update(period_anchor=anchor)
        old_plan = row["plan_type"]
        row.update(plan_type=target.name, tokens_limit=target.monthly_tokens)
        if old_plan != target.name:
            await self._audit(
                conn, row, "plan_change", actor, f"{old_plan} -> {target.name}: {reason}", now
            )
        if fresh:
            await self._audit(
                conn, row, "period_reset", actor, f"{reason}; to {row['period_end']}", now
            )
        await conn.execute(
            "UPDATE usage_limits SET plan_type = ?, tokens_limit = ?, tokens_used = ?,"
            " period_start = ?, period_end = ?, period_anchor = ?, period_seq = ?,"
            " updated_at = ? WHERE account_id = ?",
            (
                row["plan_type"],
                row["tokens_limit"],
                row["tokens_used"],
                row["period_start"],
                row["period_end"],
                row["period_anchor"],
                row["period_seq"],
                to_text(now),
                account_id,
            ),
        )
        await self._journal(
            conn, account_id, "plan", None, old_plan, target.name, actor, reason, now
        )
        return queries.balance_from_row(row, now)

    # ---- caps on members' spending (ledger/members.py) ---------------------------------

    async def set_cap(
        self,
        account_id: str,
        scope: str,
        subject_id: str | int,
        tokens: int,
        *,
        actor: str,
        reason: str,
        maximum: int | None = None,
    ) -> int | None:
        """Set a monthly cap on members' spending from a server's pool (`scope` member,
        role or default); journaled. Returns the cap it replaced, if any."""
        cap = self._cap(account_id, scope, subject_id, tokens, maximum)

        async def op(conn: Connection) -> int | None:
            now = self.clock.now()
            await self._account(conn, account_id, now)
            old = await members.set_cap_in(conn, account_id, cap, to_text(now))
            await self._journal(
                conn,
                account_id,
                _cap_action(cap.scope, cap.subject_id),
                tokens,
                None if old is None else str(old),
                str(tokens),
                actor,
                reason,
                now,
            )
            return old

        return await self.store.write(op)

    async def clear_cap(
        self, account_id: str, scope: str, subject_id: str | int, *, actor: str, reason: str
    ) -> int | None:
        """Remove a cap (journaled when there was one); returns it, or None."""
        cap = self._cap(account_id, scope, subject_id, 0, None)

        async def op(conn: Connection) -> int | None:
            now = self.clock.now()
            await self._account(conn, account_id, now)
            old = await members.clear_cap_in(conn, account_id, cap.scope, cap.subject_id)
            if old is not None:
                await self._journal(
                    conn,
                    account_id,
                    _cap_action(cap.scope, cap.subject_id),
                    None,
                    str(old),
                    None,
                    actor,
                    reason,
                    now,
                )
            return old

        return await self.store.write(op)

    def _cap(
        self, account_id: str, scope: str, subject_id: str | int, tokens: int, maximum: int | None
    ) -> Cap:
        check_account_id(account_id)
        check_amount(tokens, allow_zero=True, maximum=maximum)
        if not members.capped(account_id):
            raise InvalidAccount(f"caps apply to server accounts, not {account_id}")
        if scope not in members.SCOPES:
            raise ValueError(f"unknown cap scope {scope!r}")
        subject = "" if scope == "default" else str(subject_id)
        if scope != "default" and not subject.isdigit():
            raise ValueError(f"a {scope} cap needs a numeric id, not {subject_id!r}")
        return Cap(scope, subject, tokens)

    async def caps(self, account_id: str) -> list[Cap]:
        check_account_id(account_id)
        return await members.all_caps(self.store.reader, account_id)

    async def member_spending(
        self, account_id: str, user_id: str | int, roles: Sequence[str | int] = ()
    ) -> MemberSpending:
        """One member's use of the pool this period, and the cap that applies to them."""
        check_account_id(account_id)
        return await queries.member_spending(
            self.store.reader, account_id, str(user_id), [str(r) for r in roles], self.clock.now()
        )

    async def note_refusal(self, account_id: str) -> tuple[BalanceAlert, ...]:
        """A reserve on `account_id` was refused for lack of tokens: raise the 0% alert if
        the pool is under 20% and this is the first time this period."""
        check_account_id(account_id)

        async def op(conn: Connection) -> tuple[BalanceAlert, ...]:
            now = self.clock.now()
            row = await self._account(conn, account_id, now)
            return await alerts_in(conn, row, self.instance_id, now, refused=True)

        return await self.store.write(op)

    # ---- processes: leases and the sweeper ---------------------------------------------

    async def _register(self, kind: str) -> None:
        async def op(conn: Connection) -> None:
            now = self.clock.now()
            await conn.execute(
                "INSERT INTO instances (instance_id, kind, pid, hostname, started_at,"
                " lease_until) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self.instance_id,
                    kind,
                    os.getpid(),
                    host_key(),
                    to_text(now),
                    to_text(now + self.lease),
                ),
            )

        await self.store.write(op)
        _OPENED_HERE.add(self.instance_id)

    async def renew_lease(self) -> None:
        async def op(conn: Connection) -> None:
            now = self.clock.now()
            await conn.execute(
                "INSERT INTO instances (instance_id, kind, pid, hostname, started_at,"
                " lease_until) VALUES (?, 'bot', ?, ?, ?, ?) ON CONFLICT (instance_id)"
                " DO UPDATE SET lease_until = excluded.lease_until",
                (
                    self.instance_id,
                    os.getpid(),
                    host_key(),
                    to_text(now),
                    to_text(now + self.lease),
                ),
            )

        await self.store.write(op)

    async def sweep(self) -> SweepReport:
        """Expire this instance's holds past their time to live, and every hold of an
        instance whose lease has lapsed. Never touches another live instance's holds."""

        async def op(conn: Connection) -> SweepReport:
            now = to_text(self.clock.now())
            # While the database was out of reach (another process holding the write lock,
            # a long transaction), no process could renew its lease: a lapse then says
            # nothing about being dead. Definitely dead processes are still swept.
            stalled = time.monotonic() - self.store.stalled_at < self.lease.total_seconds()
            if stalled:
                log.info("the database stalled within a lease; lapsed leases wait")
            lapsed = "" if stalled else " OR i.lease_until <= ?"
            expired = await conn.execute_fetchall(
                "SELECT hold_id, amount FROM holds WHERE status = 'pending'"
                " AND instance_id = ? AND expires_at <= ?",
                (self.instance_id, now),
            )
            dead = await self._dead_here(conn)
            dead_marks = ", ".join("?" * len(dead))
            orphaned = await conn.execute_fetchall(
                "SELECT h.hold_id, h.amount FROM holds h LEFT JOIN instances i USING (instance_id)"
                " WHERE h.status = 'pending' AND h.instance_id != ?"
                f" AND (i.instance_id IS NULL{lapsed} OR h.instance_id IN ({dead_marks}))",
                (self.instance_id, *([] if stalled else [now]), *dead),
            )
            for rows, why in ((expired, "time to live passed"), (orphaned, "its process stopped")):
                for r in rows:
                    await self._resolve(conn, r["hold_id"], "expired", 0, why)
            freed = sum(r["amount"] for r in (*expired, *orphaned))
            await conn.execute(
                "DELETE FROM instances WHERE instance_id != ?"
                f" AND (instance_id IN ({dead_marks}){lapsed.replace('i.', '')})"
                " AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id ="
                " instances.instance_id AND h.status = 'pending')",
                (self.instance_id, *dead, *([] if stalled else [now])),
            )
            return SweepReport(len(expired), len(orphaned), freed)

        report = await self.store.write(op)
        if report.expired or report.orphaned:
            log.info(
                "sweep released %d expired and %d orphaned holds (%d tokens)",
                report.expired,
                report.orphaned,
                report.tokens_freed,
            )
        return report

    async def _dead_here(self, conn: Connection) -> list[str]:
        """Instances on this host (same kernel, same pid namespace: ledger/leases.py)
        whose process is gone: their holds need not wait for the
        lease to lapse. Only a definite "no such process" counts; a reused pid looks alive
        and simply leaves the hold to the lease, which is the safe way to be wrong. Our own
        pid is the exception: an instance with it that this process did not open belongs to
        a dead process whose pid we were given, as PID 1 of a container restarted in place."""
        rows = await conn.execute_fetchall(
            "SELECT instance_id, pid FROM instances WHERE hostname = ? AND instance_id != ?",
            (host_key(), self.instance_id),
        )
        return [
            r["instance_id"]
            for r in rows
            if (
                r["instance_id"] not in _OPENED_HERE
                if r["pid"] == os.getpid()
                else not process_alive(r["pid"])
            )
        ]

    async def lead(self, role: str) -> bool:
        """Whether this instance leads `role` (a once-only job such as syncing commands):
        it takes the role if nobody holds it or its leader's lease lapsed, and keeps it
        while it renews (`start_maintenance` does, a few times per lease)."""

        async def op(conn: Connection) -> bool:
            now = self.clock.now()
            rows = await conn.execute_fetchall(
                "INSERT INTO leaders (role, instance_id, lease_until) VALUES (?, ?, ?)"
                " ON CONFLICT (role) DO UPDATE SET instance_id = excluded.instance_id,"
                " lease_until = excluded.lease_until"
                " WHERE leaders.instance_id = excluded.instance_id OR leaders.lease_until <= ?"
                " RETURNING instance_id",
                (role, self.instance_id, to_text(now + self.lease), to_text(now)),
            )
            return bool(rows)

        leading = await self.store.write(op)
        if leading:
            self._roles.add(role)
        else:
            self._roles.discard(role)
        return leading

    async def _retire_op(self, conn: Connection) -> None:
        await conn.execute("DELETE FROM leaders WHERE instance_id = ?", (self.instance_id,))
        rows = await conn.execute_fetchall(
            "SELECT hold_id FROM holds WHERE status = 'pending' AND instance_id = ?",
            (self.instance_id,),
        )
        for r in rows:
            await self._resolve(conn, r["hold_id"], "expired", 0, "its process stopped")
        await conn.execute("DELETE FROM instances WHERE instance_id = ?", (self.instance_id,))

    def start_maintenance(self, interval_seconds: float | None = None) -> None:
        """Renew the lease and sweep in the background, a few times per lease."""
        if self._maintenance is None:
            interval = interval_seconds or max(0.05, self.lease.total_seconds() / 3)
            self._maintenance = asyncio.get_running_loop().create_task(
                self._maintain(interval), name="ledger-maintenance"
            )

    async def _maintain(self, interval: float) -> None:
        while True:
            try:
                await self.renew_lease()
                for role in list(self._roles):
                    await self.lead(role)
                await self.sweep()
                await self.archive_holds(max_batches=ARCHIVE_BATCHES_PER_ROUND)
                await self._checkpoint_when_idle()
            except asyncio.CancelledError:
                raise
            except Exception:  # a busy database must not kill the lease loop
                log.exception("ledger maintenance failed; retrying")
            await asyncio.sleep(interval)

    # ---- a bounded database: archive, checkpoint, compact -----------------------------

    async def archive_holds(self, max_batches: int | None = None) -> int:
        """Delete resolved holds older than their time to live, whose audit rows stand for
        them (ledger/archive.py), in short batches on the writer. Returns how many."""
        cutoff = to_text(self.clock.now() - self.hold_ttl)
        total, batches = 0, 0
        while max_batches is None or batches < max_batches:
            deleted = await self.store.archive_batch(cutoff)
            if deleted is None:
                break
            total += deleted
            batches += 1
        return total

    async def _checkpoint_when_idle(self) -> None:
        """Empty the WAL once the writer has rested a while, so the file shrinks back
        after a burst or a long reader instead of keeping its largest size."""
        idle = time.monotonic() - self.store.last_write
        if idle >= IDLE_CHECKPOINT_SECONDS and self._checkpointed_at != self.store.last_write:
            mark = self.store.last_write
            if not (await self.store.checkpoint("TRUNCATE")).busy:
                self._checkpointed_at = mark

    async def _after_long_read(self, started: float) -> None:
        """Empty the WAL that built up while a long job read (its pages are short reads,
        but the log grew meanwhile and keeps its size until a checkpoint truncates it)."""
        if time.monotonic() - started >= LONG_READ_SECONDS:
            await self.store.checkpoint("TRUNCATE")

    async def compact(self, step_pages: int = 2_000) -> CompactReport:
        """Reclaim space online: archive every eligible hold, give free pages back to the
        file system a few thousand at a time (incremental vacuum: writers only wait for
        one step), and empty the WAL. A database made before auto_vacuum=INCREMENTAL
        needs one full VACUUM first (writers wait for it): `converted` says it ran."""
        archived = await self.archive_holds()
        compacted = await self.store.compact(step_pages)
        checkpoint = await self.store.checkpoint("TRUNCATE")
        return CompactReport(
            archived, compacted.freed_bytes, compacted.converted, not checkpoint.busy
        )

    # ---- reads ----------------------------------------------------------------------

    async def balance(self, account_id: str) -> Balance:
        check_account_id(account_id)
        return await queries.balance(
            self.store.reader, account_id, self.plan("free"), self.clock.now()
        )

    async def usage_by_operation(self, account_id: str) -> dict[str, int]:
        check_account_id(account_id)
        return await queries.usage_by_operation(self.store.reader, account_id, self.clock.now())

    async def usage_by(self, account_id: str, by: str) -> list[tuple[str | None, int]]:
        """This period's charges by member, agent, operation or day (queries.USAGE_KEYS)."""
        check_account_id(account_id)
        if by not in queries.USAGE_KEYS:
            raise ValueError(f"usage by {by!r}; one of {', '.join(queries.USAGE_KEYS)}")
        return await queries.usage_by(self.store.reader, account_id, by, self.clock.now())

    async def history(self, account_id: str, limit: int = 50) -> list[UsageEntry]:
        check_account_id(account_id)
        return await queries.history(self.store.reader, account_id, limit)

    async def export_csv(
        self,
        out: Any,
        *,
        page: int = queries.EXPORT_PAGE,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        started = time.monotonic()
        try:
            return await queries.export_csv(self.store.reader, out, page=page, progress=progress)
        finally:
            await self._after_long_read(started)

    async def verified_before(self) -> bool:
        """Whether a clean verify has recorded a checkpoint to start from."""
        return await verifier.last_checkpoint(self.store.reader) is not None

    async def verify(
        self, *, full: bool = False, progress: verifier.Progress | None = None
    ) -> list[Violation]:
        """The invariants: incremental from the last clean run (recorded in the ledger),
        or the whole log with `full`. A clean run records itself for the next one."""
        committed = await self.store.committed()
        started = time.monotonic()
        try:
            outcome = await verifier.run(
                self.store.reader,
                committed,
                full=full,
                progress=progress,
                dialect=self.store.dialect,
            )
        finally:
            await self._after_long_read(started)
        if not outcome.violations:
            mode = "incremental" if outcome.base else "full"
            now = to_text(self.clock.now())
            await self.store.write(lambda conn: verifier.record(conn, outcome, now, mode))
        return outcome.violations


def _cap_action(scope: str, subject_id: str) -> str:
    return f"cap_{scope}" + (f":{subject_id}" if subject_id else "")


def _hold_id(hold: Hold | str) -> str:
    return hold.hold_id if isinstance(hold, Hold) else hold


def _text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _excess_note(details: str | None, excess: int) -> str | None:
    if not excess:
        return details
    note = f"exceeded the hold by {excess}"
    return f"{details}; {note}" if details else note
