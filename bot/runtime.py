"""The composition root: how every process (run, webhooks, console, the CLI) opens the
ledger from the configuration. Written once here so no front end repeats its arguments."""

from __future__ import annotations

from bot.billing import store as billing_store
from bot.config import Config
from ledger import Clock, Ledger


async def open_ledger(config: Config, kind: str, *, clock: Clock | None = None) -> Ledger:
    """The ledger on the configured database, registered as a process of `kind`, with
    the billing tables migrated (the sidecar, the bot and the CLI all apply events)."""
    ledger = await Ledger.open(
        config.storage.database,
        config.plans.as_ledger_plans(),
        clock=clock,
        hold_ttl_seconds=config.limits.hold_ttl_seconds,
        lease_seconds=config.limits.hold_lease_seconds,
        kind=kind,
        secure_delete=config.storage.secure_delete,
    )
    try:
        await billing_store.migrate(ledger.store)
    except BaseException:
        await ledger.close()
        raise
    return ledger
