"""The composition root: how every process (run, webhooks, console, the CLI) opens the
ledger from the configuration. Written once here so no front end repeats its arguments.

A database that cannot be used (a read-only folder, a file that is not a database, a
damaged page) is a `StartupError`: one line naming the file, which the CLI prints and
exits 2 on, instead of a traceback or a bot that fails every command later."""

from __future__ import annotations

import contextlib

from bot.billing import store as billing_store
from bot.config import Config
from ledger import Clock, Ledger
from ledger.storage import shown
from ledger.storage.faults import DatabaseFault


class StartupError(Exception):
    """A reason this process cannot start or go on, as one line for the operator."""


def database_fault(config: Config, error: BaseException) -> StartupError:
    """The one line for an SQLite failure that no retry will cure."""
    path = config.storage.database
    text = str(error)
    if "readonly" in text or "unable to open" in text:
        hint = "the file or its folder is not writable by this user"
    elif "not a database" in text:
        hint = "this file is not an SQLite database"
    elif "malformed" in text or "corrupt" in text:
        hint = "the database is damaged: restore a backup (docs/operations.md)"
    else:
        hint = "see docs/operations.md"
    return StartupError(f"database error: {path}: {text} ({hint})")


async def _check_pages(ledger: Ledger, config: Config) -> None:
    """`quick_check` reads every page: a damaged table stops the process at start."""
    rows = await ledger.store.reader.execute_fetchall("PRAGMA quick_check(1)")
    # SQLite's verdict spans lines ("*** in database main ***\nOn tree page ..."): one line.
    verdict = " ".join(str(rows[0][0]).split()) if rows else "no answer"
    if verdict != "ok":
        raise StartupError(
            f"database error: {shown(config.storage.database)} is damaged ({verdict}): restore "
            "a backup (docs/operations.md)"
        )


async def _migrate_billing(ledger: Ledger) -> None:
    try:
        await billing_store.migrate(ledger.store)
    except BaseException:
        with contextlib.suppress(Exception):
            await ledger.close()
        raise


async def open_ledger(
    config: Config, kind: str, *, clock: Clock | None = None, check_pages: bool = False
) -> Ledger:
    """The ledger on the configured database, registered as a process of `kind`.
    `check_pages` (long-running processes) reads the whole file once before any work."""
    try:
        ledger = await Ledger.open(
            config.storage.database,
            config.plans.as_ledger_plans(),
            clock=clock,
            hold_ttl_seconds=config.limits.hold_ttl_seconds,
            lease_seconds=config.limits.hold_lease_seconds,
            kind=kind,
            secure_delete=config.storage.secure_delete,
        )
        # The billing tables too: the sidecar, the bot and the CLI all apply events.
        await _migrate_billing(ledger)
    except DatabaseFault as error:
        raise database_fault(config, error) from None
    except OSError as error:  # the folder could not be created
        raise StartupError(f"database error: {shown(config.storage.database)}: {error}") from None
    # quick_check is SQLite's; PostgreSQL checks its own pages.
    if check_pages and getattr(ledger.store, "dialect", "sqlite") == "sqlite":
        try:
            await _check_pages(ledger, config)
        except BaseException as error:
            with contextlib.suppress(Exception):  # closing a damaged file may fail too
                await ledger.close()
            if isinstance(error, DatabaseFault):
                raise database_fault(config, error) from None
            raise
    return ledger


async def open_database(config: Config, kind: str) -> Ledger:
    """The ledger with every part's tables migrated (billing's and the application's),
    for jobs on the whole database such as `storage copy`."""
    from bot.core.repository import Repository

    ledger = await open_ledger(config, kind)
    try:
        await Repository(ledger.store).migrate()
    except BaseException:
        await ledger.close()
        raise
    return ledger
