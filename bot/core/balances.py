"""What `/tokens` shows: the balance, the plan's figures and this period's usage."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Config, PlanSettings
from ledger import Balance, Ledger


@dataclass(frozen=True)
class TokenView:
    balance: Balance
    usage: dict[str, int]
    price_label: str
    max_agents: int  # 0: unlimited
    pro: PlanSettings  # what the upgrade hint names, as configured

    @property
    def used_fraction(self) -> float:
        limit = self.balance.tokens_limit
        return 1.0 if limit == 0 else min(1.0, self.balance.tokens_used / limit)


class BalanceService:
    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger

    async def view(self, account_id: str) -> TokenView:
        balance = await self.ledger.balance(account_id)
        usage = await self.ledger.usage_by_operation(account_id)
        plan = self.config.plans.pro if balance.plan_type == "pro" else self.config.plans.free
        pro = self.config.plans.pro
        return TokenView(balance, usage, pro.price_label, plan.max_agents, pro)
