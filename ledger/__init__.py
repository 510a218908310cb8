"""The token ledger. Knows nothing of Discord or OpenAI; see ledger/ledger.py."""

from ledger.accounts import Plan, available, check_account_id, guild_account, user_account
from ledger.clock import Clock, ManualClock, SystemClock
from ledger.errors import (
    HoldNotFound,
    InsufficientTokens,
    InvalidAccount,
    InvalidAmount,
    LedgerError,
    MemberCapReached,
    UnknownPlan,
)
from ledger.ledger import DEFAULT_PLANS, Ledger
from ledger.members import Cap, MemberSpending
from ledger.records import (
    Adjustment,
    Balance,
    BalanceAlert,
    Hold,
    Resolution,
    SweepReport,
    UsageEntry,
    Violation,
)

__all__ = [
    "DEFAULT_PLANS",
    "Adjustment",
    "Balance",
    "BalanceAlert",
    "Cap",
    "Clock",
    "Hold",
    "HoldNotFound",
    "InsufficientTokens",
    "InvalidAccount",
    "InvalidAmount",
    "Ledger",
    "LedgerError",
    "ManualClock",
    "MemberCapReached",
    "MemberSpending",
    "Plan",
    "Resolution",
    "SweepReport",
    "SystemClock",
    "UnknownPlan",
    "UsageEntry",
    "Violation",
    "available",
    "check_account_id",
    "guild_account",
    "user_account",
]
