"""A stateful test: random reserves, commits, releases, expiries, grants, revokes, plan
changes and clock moves against a small in-memory model of the ledger. After every step
the model's balance must equal `Ledger.balance()` and `verify()` must find nothing."""

from __future__ import annotations

import asyncio
import calendar
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
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
    Resolution,
    SweepReport,
)

T = TypeVar("T")

ACCOUNTS = ("user:1", "guild:2")
LIMITS = {"free": 250_000, "pro": 10_000_000}
TTL = 900
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

    @property
    def limit(self) -> int:
        return LIMITS[self.plan]

    def available(self) -> int:
        return max(0, self.limit - self.used - self.held + self.bonus)


@dataclass
class ModelHold:
    account: str
    amount: int
    created: datetime
    status: str = "pending"
    charged: int = 0


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = tempfile.mkdtemp(prefix="ledger-stateful-")
        self.clock = ManualClock(START)
        self.ledger: Ledger = self.run(
            Ledger.open(Path(self.folder, "ledger.db"), clock=self.clock, hold_ttl_seconds=TTL)
        )
        self.accounts: dict[str, Account] = {}
        self.model_holds: dict[str, ModelHold] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.ledger.close())
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
        return account

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
        from_allowance = min(actual, max(0, account.limit - account.used))
        from_bonus = min(actual - from_allowance, account.bonus)
        account.used += actual - from_bonus
        account.bonus -= from_bonus
        account.held -= hold.amount
        hold.status, hold.charged = status, actual
        excess = max(0, actual - hold.amount)
        return Resolution(hold_id, hold.account, status, actual, excess, account.available(), True)

    # ---- rules -------------------------------------------------------------------------

    @rule(
        target=holds,
        account_id=st.sampled_from(ACCOUNTS),
        amount=st.one_of(st.integers(1, 20_000), st.integers(1, 400_000)),
    )
    def reserve(self, account_id: str, amount: int) -> Any:
        account = self.touch(account_id)
        can = account.limit - account.used - account.held + account.bonus >= amount
        try:
            hold = self.run(self.ledger.reserve(account_id, amount, "chat", user_id=7))
        except InsufficientTokens as refused:
            assert not can, f"refused {amount} with {account.available()} available"
            assert (refused.needed, refused.available, refused.plan) == (
                amount,
                account.available(),
                account.plan,
            )
            return multiple()
        assert can, f"admitted {amount} with {account.available()} available"
        account.held += amount
        assert hold.available_after == account.available()
        self.model_holds[hold.hold_id] = ModelHold(account_id, amount, self.now)
        return hold.hold_id

    @rule(
        hold_id=holds, actual=st.one_of(st.none(), st.integers(0, 30_000), st.integers(0, 600_000))
    )
    def commit(self, hold_id: str, actual: int | None) -> None:
        if actual is None:
            actual = self.model_holds[hold_id].amount
        expected = self.settle(hold_id, "committed", actual)
        assert self.run(self.ledger.commit(hold_id, actual)) == expected

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
        # Incremental (from the previous step's clean run) and whole agree: both clean.
        assert self.run(self.ledger.verify()) == []
        assert self.run(self.ledger.verify(full=True)) == []


LedgerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
class TestLedgerModel(LedgerMachine.TestCase):  # type: ignore[misc,valid-type]
    pass
