"""The token ledger. Knows nothing of Discord or OpenAI; see ledger/ledger.py."""

from ledger.accounts import Plan, available, check_account_id, guild_account, user_account
from ledger.clock import Clock, ManualClock, SystemClock
from ledger.errors import (
    HoldNotFound,
    InsufficientTokens,
    InvalidAccount,
    InvalidAmount,
    LedgerError,
    UnknownPlan,
)
from ledger.ledger import DEFAULT_PLANS, Ledger
from ledger.records import Adjustment, Balance, Hold, Resolution, SweepReport, UsageEntry, Violation

__all__ = [
    "DEFAULT_PLANS",
    "Adjustment",
    "Balance",
    "Clock",
    "Hold",
    "HoldNotFound",
    "InsufficientTokens",
    "InvalidAccount",
    "InvalidAmount",
    "Ledger",
    "LedgerError",
    "ManualClock",
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
