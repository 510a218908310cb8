"""Account ids, plans, and the balance arithmetic every other module relies on."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ledger.errors import InvalidAccount, InvalidAmount

_ACCOUNT_ID = re.compile(r"(guild|user):[0-9]{1,20}")


def check_account_id(account_id: str) -> str:
    if not isinstance(account_id, str) or not _ACCOUNT_ID.fullmatch(account_id):
        raise InvalidAccount(f"account id {account_id!r} is not guild:<digits> or user:<digits>")
    return account_id


def check_amount(amount: object, *, allow_zero: bool = False, maximum: int | None = None) -> int:
    # bool is an int subclass; True must not pass as 1 token.
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidAmount(f"amount {amount!r} is not an integer")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount(f"amount {amount} must be positive")
    if maximum is not None and amount > maximum:
        raise InvalidAmount(f"amount {amount} is over the limit of {maximum}")
    return amount


def guild_account(guild_id: int) -> str:
    return f"guild:{guild_id}"


def user_account(user_id: int) -> str:
    return f"user:{user_id}"


@dataclass(frozen=True)
class Plan:
    name: str
    monthly_tokens: int
    max_agents: int  # 0 means unlimited


def available(tokens_limit: int, tokens_used: int, tokens_held: int, bonus_tokens: int) -> int:
    """What an account may still reserve; never below 0 (an overrun shows as 0)."""
    return max(0, tokens_limit - tokens_used - tokens_held + bonus_tokens)


def split_charge(actual: int, tokens_limit: int, tokens_used: int, bonus_tokens: int) -> int:
    """How much of a charge the bonus pays: the monthly allowance goes first."""
    from_allowance = min(actual, max(0, tokens_limit - tokens_used))
    return min(actual - from_allowance, bonus_tokens)
