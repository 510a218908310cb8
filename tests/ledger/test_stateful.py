"""A stateful test: random reserves, commits, releases, expiries, grants, revokes, plan
changes, members' caps and clock moves against a small in-memory model of the ledger.
After every step the model's balance and each member's spending must equal the ledger's,
and `verify()` must find nothing."""

from __future__ import annotations

import asyncio
import calendar
import shutil
import tempfile
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule

from ledger import (
    Adjustment,
    Balance,
    InsufficientTokens,
    Ledger,
    ManualClock,
    MemberCapReached,
    Resolution,
    SweepReport,
)
from tests.examples import examples
from tests.stores import migrated_schema

T = TypeVar("T")

ACCOUNTS = ("user:1", "guild:2")
LIMITS = {"free": 250_000, "pro": 10_000_000}
TTL = 900
USERS = ("7", "8")
ROLE = "70"
CAP_KEYS = (("member", "7"), ("role", ROLE), ("default", ""))
START = datetime(2028, 1, 31, 12, tzinfo=UTC)  # an anchor on the 31st, in a leap year


def months_later(anchor: datetime, months: int) -> datetime:
    """Written apart from ledger/periods.py on purpose: the model must not borrow it."""
    year = anchor.year + (anchor.month - 1 + months) // 12
    month = (anchor.month - 1 + months) % 12 + 1
    return anchor.replace(
        year=year, month=month, day=min(anchor.day, calendar.monthrange(year, month)[1])
    )


def period_at(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    n = 0
    while months_later(anchor, n + 1) <= now:
        n += 1
    return months_later(anchor, n), months_later(anchor, n + 1)


@dataclass
class Account:
    plan: str
    used: int
    held: int
    bonus: int
    start: datetime
    end: datetime
    anchor: datetime
    seq: int = 1  # the period's number, as usage_limits.period_seq

    @property
    def limit(self) -> int:
        return LIMITS[self.plan]

    def available(self) -> int:
        return max(0, self.limit - self.used - self.held + self.bonus)


@dataclass
class Member:
    used: int = 0
    held: int = 0
    seq: int = 0  # the account's period these `used` belong to


@dataclass
class ModelHold:
    account: str
    amount: int
    created: datetime
    user: str
    status: str = "pending"
    charged: int = 0
    charged_late: bool = False  # committed after the sweeper expired it (issue 10, 1)


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")
    store = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = tempfile.mkdtemp(prefix="ledger-stateful-")
        self.clock = ManualClock(START)
        self.lent: AbstractAsyncContextManager[str] | None = None
        database = str(Path(self.folder, "ledger.db"))
        if self.store == "postgresql":
            self.lent = migrated_schema()
            database = self.run(self.lent.__aenter__())
        self.ledger: Ledger = self.run(
            Ledger.open(database, clock=self.clock, hold_ttl_seconds=TTL)
        )
        self.accounts: dict[str, Account] = {}
        self.model_holds: dict[str, ModelHold] = {}
        self.members: dict[tuple[str, str], Member] = {}
        self.caps: dict[tuple[str, str], int] = {}  # on guild:2 only

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.ledger.close())
            if self.lent is not None:
                self.run(self.lent.__aexit__(None, None, None))
        finally:
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    # ---- the model ---------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def touch(self, account_id: str) -> Account:
        """What a write does first: create the account, or roll its period over."""
        now = self.now
        account = self.accounts.get(account_id)
        if account is None:
            account = Account("free", 0, 0, 0, now, months_later(now, 1), now)
            self.accounts[account_id] = account
        elif now >= account.end:
            account.start, account.end = period_at(account.anchor, now)
            account.used = 0
            account.seq += 1
        return account

    def member(self, account_id: str, user: str) -> Member:
        """A member's counter as a write sees it: back to 0 in a new period."""
        account = self.touch(account_id)
        member = self.members.setdefault((account_id, user), Member())
        if member.seq != account.seq:
            member.used, member.seq = 0, account.seq
        return member

    def cap_of(self, account_id: str, user: str, roles: tuple[str, ...]) -> int | None:
        if not account_id.startswith("guild:"):
            return None
        for key in (("member", user), *(("role", r) for r in roles), ("default", "")):
            if key in self.caps:
                return self.caps[key]
        return None

    def expected_spending(self, account_id: str, user: str) -> tuple[int, int]:
        account = self.accounts.get(account_id)
        member = self.members.get((account_id, user))
        if account is None or member is None:
            return 0, 0
        current = member.seq == account.seq and self.now < account.end
        return (member.used if current else 0), member.held

    def expected_balance(self, account_id: str) -> Balance:
        now = self.now
        account = self.accounts.get(account_id)
        if account is None:
            limit = LIMITS["free"]
            return Balance(account_id, "free", limit, 0, 0, 0, limit, now, months_later(now, 1))
        used, start, end = account.used, account.start, account.end
        if now >= end:
            (start, end), used = period_at(account.anchor, now), 0
        shown = Account(account.plan, used, account.held, account.bonus, start, end, start)
        return Balance(
            account_id,
            account.plan,
            account.limit,
            used,
            account.held,
            account.bonus,
            shown.available(),
            start,
            end,
        )

    def settle(self, hold_id: str, status: str, actual: int) -> Resolution:
        hold = self.model_holds[hold_id]
        if hold.status == "expired" and status == "committed" and not hold.charged_late:
            return self.charge_late(hold_id, actual)
        if hold.status != "pending":
            return Resolution(
                hold_id,
                hold.account,
                hold.status,
                hold.charged,
                max(0, hold.charged - hold.amount),
                self.expected_balance(hold.account).available,
                False,
            )
        account = self.touch(hold.account)
        member = self.member(hold.account, hold.user)
        member.held -= hold.amount
        member.used += actual
        from_allowance = min(actual, max(0, account.limit - account.used))
        from_bonus = min(actual - from_allowance, account.bonus)
        account.used += actual - from_bonus
        account.bonus -= from_bonus
        account.held -= hold.amount
        hold.status, hold.charged = status, actual
        excess = max(0, actual - hold.amount)
        return Resolution(hold_id, hold.account, status, actual, excess, account.available(), True)

    def charge_late(self, hold_id: str, actual: int) -> Resolution:
        """The work outlived its hold: charged in full, once; nothing left to free."""
        hold = self.model_holds[hold_id]
        account = self.touch(hold.account)
        self.member(hold.account, hold.user).used += actual
        from_allowance = min(actual, max(0, account.limit - account.used))
        from_bonus = min(actual - from_allowance, account.bonus)
        account.used += actual - from_bonus
        account.bonus -= from_bonus
        hold.charged_late = True
        return Resolution(
            hold_id, hold.account, "committed", actual, actual, account.available(), True
        )

    # ---- rules -------------------------------------------------------------------------

    @rule(
        target=holds,
        account_id=st.sampled_from(ACCOUNTS),
        amount=st.one_of(st.integers(1, 20_000), st.integers(1, 400_000)),
        user=st.sampled_from(USERS),
        roles=st.sampled_from([(), (ROLE,)]),
    )
    def reserve(self, account_id: str, amount: int, user: str, roles: tuple[str, ...]) -> Any:
        existed = account_id in self.accounts
        account = self.touch(account_id)
        member = self.member(account_id, user)
        cap = self.cap_of(account_id, user, roles)
        within = cap is None or member.used + member.held + amount <= cap
        can = account.limit - account.used - account.held + account.bonus >= amount
        try:
            hold = self.run(
                self.ledger.reserve(account_id, amount, "chat", user_id=user, roles=roles)
            )
        except MemberCapReached as capped:
            if not existed:  # a refused op keeps nothing it wrote, the account included
                del self.accounts[account_id]
            assert not within, f"capped at {cap} with {member.used + member.held} spent"
            assert (capped.needed, capped.used, capped.cap) == (
                amount,
                member.used + member.held,
                cap,
            )
            return multiple()
        except InsufficientTokens as refused:
            if not existed:  # a refused op keeps nothing it wrote, the account included
                del self.accounts[account_id]
            assert within, f"{amount} passed the pool over a cap of {cap}"
            assert not can, f"refused {amount} with {account.available()} available"
            assert (refused.needed, refused.available, refused.plan) == (
                amount,
                account.available(),
                account.plan,
            )
            return multiple()
        assert can, f"admitted {amount} with {account.available()} available"
        assert within, f"admitted {amount} over a cap of {cap}"
        account.held += amount
        member.held += amount
        assert hold.available_after == account.available()
        self.model_holds[hold.hold_id] = ModelHold(account_id, amount, self.now, user)
        return hold.hold_id

    @rule(key=st.sampled_from(CAP_KEYS), tokens=st.one_of(st.none(), st.integers(0, 300_000)))
    def set_cap(self, key: tuple[str, str], tokens: int | None) -> None:
        scope, subject = key
        old = self.caps.get(key)
        if tokens is None:
            self.caps.pop(key, None)
            done = self.ledger.clear_cap("guild:2", scope, subject, actor="test", reason="clear")
        else:
            self.caps[key] = tokens
            done = self.ledger.set_cap(
                "guild:2", scope, subject, tokens, actor="test", reason="set"
            )
        self.touch("guild:2")
        assert self.run(done) == old

    @rule(
        hold_id=holds, actual=st.one_of(st.none(), st.integers(0, 30_000), st.integers(0, 600_000))
    )
    def commit(self, hold_id: str, actual: int | None) -> None:
        if actual is None:
            actual = self.model_holds[hold_id].amount
        expected = self.settle(hold_id, "committed", actual)
        # The model has no low-balance alerts: compared without them.
        result = self.run(self.ledger.commit(hold_id, actual))
        assert replace(result, alerts=()) == expected

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        expected = self.settle(hold_id, "released", 0)
        assert self.run(self.ledger.release(hold_id)) == expected

    @rule(extra=st.integers(0, TTL))
    def expire(self, extra: int) -> None:
        self.clock.advance(seconds=TTL + extra)
        due = [
            (hold_id, hold)
            for hold_id, hold in self.model_holds.items()
            if hold.status == "pending" and hold.created + timedelta(seconds=TTL) <= self.now
        ]
        for hold_id, _ in due:
            self.settle(hold_id, "expired", 0)
        expected = SweepReport(len(due), 0, sum(hold.amount for _, hold in due))
        assert self.run(self.ledger.sweep()) == expected

    @rule(account_id=st.sampled_from(ACCOUNTS), amount=st.integers(1, 100_000))
    def grant(self, account_id: str, amount: int) -> None:
        account = self.touch(account_id)
        account.bonus += amount
        expected = Adjustment(account_id, amount, amount, account.bonus, account.available())
        assert self.run(self.ledger.grant(account_id, amount, "test", "grant")) == expected

    @rule(account_id=st.sampled_from(ACCOUNTS), amount=st.integers(1, 100_000))
    def revoke(self, account_id: str, amount: int) -> None:
        account = self.touch(account_id)
        taken = min(amount, account.bonus)
        account.bonus -= taken
        expected = Adjustment(account_id, amount, taken, account.bonus, account.available())
        assert self.run(self.ledger.revoke(account_id, amount, "test", "revoke")) == expected

    @rule(
        account_id=st.sampled_from(ACCOUNTS),
        plan=st.sampled_from(sorted(LIMITS)),
        days=st.one_of(st.none(), st.integers(-3, 60)),
    )
    def set_plan(self, account_id: str, plan: str, days: int | None) -> None:
        period_end = None if days is None else self.now + timedelta(days=days)
        account = self.touch(account_id)
        if period_end is not None and period_end > self.now:
            account.used = 0
            account.start, account.end, account.anchor = self.now, period_end, period_end
            account.seq += 1
        account.plan = plan
        balance = self.run(
            self.ledger.set_plan(account_id, plan, period_end, actor="test", reason="plan")
        )
        assert balance == self.expected_balance(account_id)

    @rule(seconds=st.integers(1, 45 * 86_400))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds=seconds)

    @rule(account_id=st.sampled_from(ACCOUNTS), extra=st.sampled_from([-1, 0, 1, 86_400 * 95]))
    def advance_to_period_end(self, account_id: str, extra: int) -> None:
        account = self.accounts.get(account_id)
        if account is None:
            return
        target = account.end + timedelta(seconds=extra)
        if target > self.now:
            self.clock.set(target)

    # ---- checks ------------------------------------------------------------------------

    @invariant()
    def balances_match_and_verify_is_clean(self) -> None:
        for account_id in ACCOUNTS:
            assert self.run(self.ledger.balance(account_id)) == self.expected_balance(account_id)
            for user in USERS:
                spending = self.run(self.ledger.member_spending(account_id, user, (ROLE,)))
                assert (spending.tokens_used, spending.tokens_held) == self.expected_spending(
                    account_id, user
                )
                cap = self.cap_of(account_id, user, (ROLE,))
                assert (None if spending.cap is None else spending.cap.tokens) == cap
        # Incremental (from the previous step's clean run) and whole agree: both clean.
        assert self.run(self.ledger.verify()) == []
        assert self.run(self.ledger.verify(full=True)) == []


LedgerMachine.TestCase.settings = settings(
    max_examples=examples(40),
    stateful_step_count=30,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
class TestLedgerModel(LedgerMachine.TestCase):  # type: ignore[misc,valid-type]
    pass


class PostgresLedgerMachine(LedgerMachine):
    store = "postgresql"


PostgresLedgerMachine.TestCase.settings = settings(
    LedgerMachine.TestCase.settings, max_examples=examples(15)
)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
class TestLedgerModelOnPostgres(PostgresLedgerMachine.TestCase):  # type: ignore[misc,valid-type]
    pass
