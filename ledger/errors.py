"""Typed errors of the ledger. A front end turns each into a sentence for its user."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InsufficientTokens(LedgerError):
    """A reserve was refused: the account cannot cover `needed`."""

    def __init__(self, needed: int, available: int, plan: str) -> None:
        super().__init__(f"needs {needed} tokens, {available} available on the {plan} plan")
        self.needed = needed
        self.available = available
        self.plan = plan


class InvalidAccount(LedgerError):
    """An account id that is neither `guild:<digits>` nor `user:<digits>`."""


class InvalidAmount(LedgerError):
    """An amount that is not a positive integer (or is over a bound)."""


class UnknownPlan(LedgerError):
    """A plan name that the configuration does not define."""


class HoldNotFound(LedgerError):
    """A hold id the ledger has never issued."""
