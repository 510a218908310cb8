"""Typed errors of the ledger. A front end turns each into a sentence for its user."""

from __future__ import annotations

from datetime import datetime


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InsufficientTokens(LedgerError):
    """A reserve was refused: the account cannot cover `needed`."""

    def __init__(
        self, needed: int, available: int, plan: str, *, approximate: bool = False
    ) -> None:
        about = "about " if approximate else ""
        super().__init__(f"needs {about}{needed} tokens, {available} available on the {plan} plan")
        self.needed = needed
        self.available = available
        self.plan = plan
        # `needed` is an estimate (a document judged from a sample of its pages).
        self.approximate = approximate


class InvalidAccount(LedgerError):
    """An account id that is neither `guild:<digits>` nor `user:<digits>`."""


class InvalidAmount(LedgerError):
    """An amount that is not a positive integer (or is over a bound)."""


class UnknownPlan(LedgerError):
    """A plan name that the configuration does not define."""


class HoldNotFound(LedgerError):
    """A hold id the ledger has never issued."""


class MemberCapReached(LedgerError):
    """A reserve was refused: the member's cap inside the server's pool cannot cover it.

    `used` counts the member's charges this period and their holds in progress; `scope`
    and `subject_id` name the cap that applied (member, role or default)."""

    def __init__(
        self,
        needed: int,
        used: int,
        cap: int,
        scope: str,
        subject_id: str,
        resets_at: datetime,
    ) -> None:
        super().__init__(
            f"needs {needed} tokens; the {scope} cap of {cap} tokens has {max(0, cap - used)} left"
        )
        self.needed = needed
        self.used = used
        self.cap = cap
        self.scope = scope
        self.subject_id = subject_id
        self.resets_at = resets_at


class StoreBusy(LedgerError):
    """The database stayed locked (another process's long write) past every retry.
    Transient: the caller may try again later (a webhook answers 500 so it is resent)."""
