"""Operators' actions: grant, revoke, plan, usage. Every call re-checks that the caller
is an operator (configured ids, or the application's owner or team), whatever the client
sent or hid, and every change is journaled with the operator and the reason."""

from __future__ import annotations

from collections.abc import Iterable

from bot.config import Config
from bot.core.balances import BalanceService, TokenView
from bot.errors import InvalidInput, PermissionDenied
from ledger import Adjustment, Balance, InvalidAmount, Ledger

REASON_MAX = 300


class AdminService:
    def __init__(self, config: Config, ledger: Ledger, balances: BalanceService) -> None:
        self.config = config
        self.ledger = ledger
        self.balances = balances
        self.owner_ids: set[int] = set()  # the application's owner or team, set at start

    def set_owners(self, ids: Iterable[int]) -> None:
        self.owner_ids = set(ids)

    def is_operator(self, user_id: int) -> bool:
        return user_id in self.owner_ids or user_id in set(self.config.admins.user_ids)

    def require_operator(self, user_id: int) -> None:
        if not self.is_operator(user_id):
            raise PermissionDenied("Only the bot's operators can use /admin.")

    def _reason(self, reason: str) -> str:
        reason = " ".join(reason.split())
        if not reason:
            raise InvalidInput("Give a reason: it is kept in the journal.")
        return reason[:REASON_MAX]

    async def grant(self, operator: int, account_id: str, amount: int, reason: str) -> Adjustment:
        self.require_operator(operator)
        return await self._adjust("grant", operator, account_id, amount, reason)

    async def revoke(self, operator: int, account_id: str, amount: int, reason: str) -> Adjustment:
        self.require_operator(operator)
        return await self._adjust("revoke", operator, account_id, amount, reason)

    async def _adjust(
        self, action: str, operator: int, account_id: str, amount: int, reason: str
    ) -> Adjustment:
        change = self.ledger.grant if action == "grant" else self.ledger.revoke
        try:
            return await change(
                account_id,
                amount,
                f"discord:{operator}",
                self._reason(reason),
                maximum=self.config.limits.max_grant,
            )
        except InvalidAmount as error:
            raise InvalidInput(
                f"The amount must be a whole number from 1 to {self.config.limits.max_grant:,}."
            ) from error

    async def set_plan(self, operator: int, account_id: str, plan: str, reason: str) -> Balance:
        self.require_operator(operator)
        if plan not in ("free", "pro"):
            raise InvalidInput("The plan is free or pro.")
        return await self.ledger.set_plan(
            account_id, plan, actor=f"discord:{operator}", reason=self._reason(reason)
        )

    async def usage(self, operator: int, account_id: str) -> TokenView:
        self.require_operator(operator)
        return await self.balances.view(account_id)
