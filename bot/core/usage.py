"""What `/usage` shows: this period's charges by member, agent, operation and day (for
managers), or a member's own use and cap. Every figure is a sum of the ledger's charge
rows for the account's current period, so the totals equal the ledger's charges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.core.metering import Actor
from bot.errors import PermissionDenied
from ledger import Balance, Ledger, MemberSpending

TOP_MEMBERS = 10


@dataclass(frozen=True)
class UsageReport:
    balance: Balance
    total: int  # every charge of the period (allowance and bonus alike)
    by_member: list[tuple[str, int]]  # user ids, the top TOP_MEMBERS
    others: int  # the rest of the members together
    by_agent: list[tuple[str, int]]  # "" for charges that served no agent
    by_operation: list[tuple[str, int]]
    by_day: list[tuple[str, int]]  # YYYY-MM-DD, in order


@dataclass(frozen=True)
class OwnUsage:
    spending: MemberSpending
    resets: datetime


class UsageService:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def report(self, actor: Actor) -> UsageReport:
        """The server's figures, for its managers (in a DM, the user's own account)."""
        if not actor.can_manage:
            raise PermissionDenied("Only members with Manage Server see the whole server's usage.")
        account = actor.account_id
        by_member = await self.ledger.usage_by(account, "member")
        named = [(k or "", n) for k, n in by_member]
        return UsageReport(
            balance=await self.ledger.balance(account),
            total=sum(n for _, n in named),
            by_member=named[:TOP_MEMBERS],
            others=sum(n for _, n in named[TOP_MEMBERS:]),
            by_agent=[(k or "", n) for k, n in await self.ledger.usage_by(account, "agent")],
            by_operation=[
                (k or "", n) for k, n in await self.ledger.usage_by(account, "operation")
            ],
            by_day=[(k or "", n) for k, n in await self.ledger.usage_by(account, "day")],
        )

    async def own(self, actor: Actor) -> OwnUsage:
        """A member's own use of the pool this period, and the cap that applies to them."""
        spending = await self.ledger.member_spending(actor.account_id, actor.user_id, actor.roles)
        balance = await self.ledger.balance(actor.account_id)
        return OwnUsage(spending, balance.period_end)
