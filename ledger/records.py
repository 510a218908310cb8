"""Plain results the ledger returns. Amounts are integer tokens; times are UTC."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Hold:
    """A reservation: `amount` tokens set aside until the hold is resolved."""

    hold_id: str
    account_id: str
    amount: int
    operation_type: str
    model_used: str | None
    user_id: str | None
    guild_id: str | None
    available_after: int  # what the account can still spend while this hold is pending


@dataclass(frozen=True)
class BalanceAlert:
    """A low-balance threshold an account crossed for the first time this period."""

    account_id: str
    threshold: int  # percent of the monthly allowance left: 20 or 0
    remaining: int
    tokens_limit: int
    period_end: datetime


@dataclass(frozen=True)
class Resolution:
    """How a hold ended. `first` is False when a repeat call returned the earlier end."""

    hold_id: str
    account_id: str
    status: str  # committed | released | expired
    charged: int
    excess: int  # charged beyond the hold (the work was done; it is charged in full)
    available: int
    first: bool
    # Low-balance thresholds this charge crossed first in the period (ledger/alerts.py).
    alerts: tuple[BalanceAlert, ...] = ()


@dataclass(frozen=True)
class Balance:
    account_id: str
    plan_type: str
    tokens_limit: int
    tokens_used: int
    tokens_held: int
    bonus_tokens: int
    available: int
    period_start: datetime
    period_end: datetime

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["period_start"] = self.period_start.isoformat()
        data["period_end"] = self.period_end.isoformat()
        return data


@dataclass(frozen=True)
class Adjustment:
    """The outcome of a grant or a revoke: `applied` may be less than asked (revoke)."""

    account_id: str
    requested: int
    applied: int
    bonus_tokens: int
    available: int


@dataclass(frozen=True)
class UsageEntry:
    id: int
    account_id: str
    user_id: str | None
    guild_id: str | None
    operation_type: str
    model_used: str | None
    tokens_used: int
    bonus_delta: int
    status: str
    hold_id: str | None
    details: str | None
    created_at: str


@dataclass(frozen=True)
class SweepReport:
    expired: int  # holds past their time to live (this instance's own)
    orphaned: int  # holds of instances whose lease lapsed
    tokens_freed: int


@dataclass(frozen=True)
class Violation:
    account_id: str | None
    message: str

    def __str__(self) -> str:
        where = self.account_id or "ledger"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class CompactReport:
    archived_holds: int
    bytes_freed: int  # given back to the file system
    converted: bool  # a full VACUUM switched the file to incremental vacuum first
    wal_emptied: bool  # False when a reader kept the WAL alive
