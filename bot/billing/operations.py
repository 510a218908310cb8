"""What operators do to billing from the command line: replay a stored event, link a
subscription bought without custom data to an account, and list what was received."""

from __future__ import annotations

from dataclasses import dataclass

from bot.billing import store
from bot.billing.apply import Outcome, Rules, decide, recompute
from bot.billing.lemonsqueezy.statuses import PROVIDER
from bot.billing.lemonsqueezy.webhook import parse_event
from bot.billing.provider import InvalidEvent
from bot.billing.store import StoredEvent
from ledger import Ledger, LedgerError
from ledger.storage import Connection

# Outcomes whose effect is in the books: a replay of them changes nothing.
DONE = ("applied", "refund")


class BillingError(LedgerError):
    """An operator's request that cannot be done; the message names the id at fault (a
    domain error, so the store rolls back only its own operation)."""


@dataclass(frozen=True)
class Replayed:
    event: StoredEvent
    outcome: Outcome
    changed: bool  # False: it had been applied already, nothing was done


async def replay(ledger: Ledger, rules: Rules, event_id: int) -> Replayed:
    """Apply a stored event again from its raw body, with today's configuration."""
    stored = await store.event_by_id(ledger.store.reader, event_id)
    if stored is None:
        raise BillingError(f"no webhook event {event_id} (see `billing events`)")
    if stored.body is None:
        raise BillingError(f"event {event_id} was received before raw bodies were kept")
    if stored.outcome in DONE:
        return Replayed(stored, Outcome(stored.outcome, stored.account_id), False)
    try:
        event = parse_event(stored.body)
    except InvalidEvent as error:
        raise BillingError(f"event {event_id} is not readable: {error}") from None

    async def op(conn: Connection) -> Outcome:
        outcome = await decide(ledger, conn, event, rules)
        await conn.execute(
            "UPDATE webhook_events SET outcome = ?, detail = ?, account_id = ?, effect_key = ?"
            " WHERE id = ?",
            (
                outcome.outcome,
                f"replayed: {outcome.detail}",
                outcome.account_id,
                outcome.effect_key,
                event_id,
            ),
        )
        return outcome

    outcome = await ledger.store.write(op)
    return Replayed(stored, outcome, True)


async def link(
    ledger: Ledger, rules: Rules, subscription_id: str, account_id: str, actor: str
) -> tuple[str, str]:
    """Attach an unlinked subscription to `account_id` and apply its stored state;
    returns the account's plan before and after."""

    async def op(conn: Connection) -> tuple[str, str]:
        row = await store.subscription(conn, PROVIDER, subscription_id)
        if row is None:
            raise BillingError(f"no subscription {subscription_id} was received")
        if row["account_id"] not in (None, account_id):
            raise BillingError(
                f"subscription {subscription_id} is linked to {row['account_id']} already"
            )
        await conn.execute(
            "UPDATE subscriptions SET account_id = ? WHERE provider = ? AND subscription_id = ?",
            (account_id, PROVIDER, subscription_id),
        )
        return await recompute(
            ledger,
            conn,
            account_id,
            rules,
            f"subscription {subscription_id} linked by an operator",
            actor,
        )

    return await ledger.store.write(op)


async def events(ledger: Ledger, account_id: str | None, limit: int) -> list[StoredEvent]:
    return await store.events(ledger.store.reader, account_id, limit)
