"""Server managers' controls: members' caps inside the server's pool, where agents may
talk, the role paid commands need, and the low-balance alerts.

Caps live in the ledger (ledger/members.py) and are enforced by the reserve itself, so
every paid path obeys them as long as the actor carries the member's roles. The channel
and role rules are checked here, before anything is held: `admit` runs from the meter's
gate for every paid call (the /chat command and plain messages in an agent's thread go
through the same ChatService.ask, so both are covered), and a cog may call it earlier to
refuse before doing visible work (such as opening a thread). A refusal charges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from bot.config import Config
from bot.core.metering import Actor, Meter
from bot.core.repository import Repository, ServerRules
from bot.errors import InvalidInput, PermissionDenied
from ledger import BalanceAlert, Cap, Ledger, MemberCapReached, MemberSpending

# Operations where an agent talks, bound by the channel rule; every metered operation
# is paid, bound by the role rule.
TALKING = frozenset({"chat"})
MAX_CHANNELS = 25


class ChannelNotAllowed(PermissionDenied):
    def __init__(self, channels: tuple[int, ...]) -> None:
        where = ", ".join(f"<#{c}>" for c in channels)
        super().__init__(f"Agents talk only in {where} on this server. Nothing was charged.")
        self.channels = channels


class RoleRequired(PermissionDenied):
    def __init__(self, role_id: int) -> None:
        super().__init__(
            f"Paid commands on this server need the <@&{role_id}> role. Nothing was charged."
        )
        self.role_id = role_id


def resets_on(when: datetime) -> str:
    return f"{when:%B} {when.day}, {when.year}"


def cap_sentence(error: MemberCapReached) -> str:
    """The refusal, naming the cap that applied and when it resets."""
    whom = {
        "member": "gives you",
        "role": f"gives members with the <@&{error.subject_id}> role",
        "default": "gives each member",
    }[error.scope]
    return (
        f"You have used {error.used:,} of the {error.cap:,} tokens this server {whom} "
        f"this month; it resets {resets_on(error.resets_at)}."
    )


@dataclass(frozen=True)
class LimitsView:
    caps: list[Cap]
    rules: ServerRules


@dataclass(frozen=True)
class AlertNotice:
    """A low-balance alert ready to send: to `channel_id`, or to the server's owner."""

    account_id: str
    guild_id: int
    channel_id: int | None
    text: str


class LimitsService:
    def __init__(self, config: Config, ledger: Ledger, repo: Repository, meter: Meter) -> None:
        self.config = config
        self.ledger = ledger
        self.repo = repo
        meter.gate = self.admit

    # ---- admission: channel and role rules -------------------------------------------

    async def admit(self, actor: Actor, operation: str) -> None:
        """Refuse (ChannelNotAllowed, RoleRequired) a paid `operation` the server's rules
        forbid here. Managers pass the role rule: they set it."""
        if actor.guild_id is None:
            return  # a DM: the user's own account, no server rules
        rules = await self.repo.server_rules(actor.account_id)
        if operation in TALKING and rules.channels and actor.channel_id not in rules.channels:
            raise ChannelNotAllowed(rules.channels)
        if rules.paid_role is not None and not actor.can_manage:
            if rules.paid_role not in actor.roles:
                raise RoleRequired(rules.paid_role)

    # ---- caps ------------------------------------------------------------------------

    def _manager(self, actor: Actor) -> None:
        if actor.guild_id is None:
            raise InvalidInput("Limits apply to a server's shared tokens; use this in a server.")
        if not actor.can_manage:
            raise PermissionDenied(
                "Only members with Manage Server can see or change this server's limits."
            )

    async def set_cap(
        self, actor: Actor, scope: str, subject_id: int | None, tokens: int, reason: str | None
    ) -> int | None:
        """Set a member's, a role's or the default monthly cap; returns the one replaced."""
        self._manager(actor)
        return await self.ledger.set_cap(
            actor.account_id,
            scope,
            "" if subject_id is None else subject_id,
            tokens,
            actor=f"user:{actor.user_id}",
            reason=reason or f"/limits {scope}",
            maximum=self.config.limits.max_grant,
        )

    async def clear_caps(
        self, actor: Actor, member_id: int | None, role_id: int | None, reason: str | None
    ) -> list[tuple[Cap, bool]]:
        """Clear the member's and/or the role's cap, or the default when neither is named;
        each with whether there was one to clear."""
        self._manager(actor)
        targets = [("member", member_id), ("role", role_id)]
        named: list[tuple[str, int | None]] = [(s, i) for s, i in targets if i is not None]
        chosen = named or [("default", None)]
        cleared = []
        for scope, subject in chosen:
            old = await self.ledger.clear_cap(
                actor.account_id,
                scope,
                "" if subject is None else subject,
                actor=f"user:{actor.user_id}",
                reason=reason or "/limits clear",
            )
            cleared.append(
                (Cap(scope, "" if subject is None else str(subject), old or 0), old is not None)
            )
        return cleared

    async def view(self, actor: Actor) -> LimitsView:
        self._manager(actor)
        caps = await self.ledger.caps(actor.account_id)
        return LimitsView(caps, await self.repo.server_rules(actor.account_id))

    async def spending(self, actor: Actor) -> MemberSpending:
        return await self.ledger.member_spending(actor.account_id, actor.user_id, actor.roles)

    # ---- channel, role and alert rules -----------------------------------------------

    async def add_channel(self, actor: Actor, channel_id: int) -> ServerRules:
        self._manager(actor)

        def change(rules: ServerRules) -> ServerRules:
            if channel_id in rules.channels:
                return rules
            if len(rules.channels) >= MAX_CHANNELS:
                raise InvalidInput(f"Agents can be given at most {MAX_CHANNELS} channels.")
            return replace(rules, channels=(*rules.channels, channel_id))

        return await self.repo.update_rules(actor.account_id, change)

    async def remove_channel(self, actor: Actor, channel_id: int | None) -> ServerRules:
        """Take one channel off the list, or every channel (agents talk anywhere again)."""
        self._manager(actor)
        return await self.repo.update_rules(
            actor.account_id,
            lambda r: replace(
                r,
                channels=()
                if channel_id is None
                else tuple(c for c in r.channels if c != channel_id),
            ),
        )

    async def set_paid_role(self, actor: Actor, role_id: int | None) -> ServerRules:
        self._manager(actor)
        return await self.repo.update_rules(
            actor.account_id, lambda r: replace(r, paid_role=role_id)
        )

    async def set_alert_channel(self, actor: Actor, channel_id: int | None) -> ServerRules:
        self._manager(actor)
        return await self.repo.update_rules(
            actor.account_id, lambda r: replace(r, alert_channel=channel_id)
        )

    # ---- low-balance alerts ----------------------------------------------------------

    async def notice(self, alert: BalanceAlert) -> AlertNotice | None:
        """Where and what to tell a server's managers; None for a user's own account."""
        if not alert.account_id.startswith("guild:"):
            return None
        rules = await self.repo.server_rules(alert.account_id)
        if alert.threshold == 0:
            head = (
                f"⚠️ This server has used its monthly allowance of {alert.tokens_limit:,} tokens"
                f" ({alert.remaining:,} left, too few for what members ask)."
            )
        else:
            head = (
                f"⚠️ This server has {alert.remaining:,} of its {alert.tokens_limit:,} monthly "
                f"tokens left (under {alert.threshold}%)."
            )
        text = f"{head} It resets {resets_on(alert.period_end)}. /upgrade for more."
        guild_id = int(alert.account_id.removeprefix("guild:"))
        return AlertNotice(alert.account_id, guild_id, rules.alert_channel, text)
